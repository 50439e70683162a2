"""The engines the tests in this folder run jobs in: Podman as installed, and a Docker
daemon (started when none runs, and stopped when the tests end)."""

from __future__ import annotations

import pytest
from engine_support import answers, ensure_docker


@pytest.fixture(scope="session")
def docker_up() -> str | None:
    return ensure_docker()


@pytest.fixture(params=["podman", "docker"])
def engine(request: pytest.FixtureRequest) -> str:
    """Each engine in turn; a test skips with the reason where one cannot run here."""
    name: str = request.param
    why = request.getfixturevalue("docker_up") if name == "docker" else answers(name)
    if why is not None:
        pytest.skip(why)
    return name
