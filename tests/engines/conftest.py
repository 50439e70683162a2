"""The engines the tests in this folder run jobs in: Podman as installed, and a Docker
daemon for the session (started here when none runs, then stopped)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from engine_support import answers, docker_daemon


@pytest.fixture(scope="session")
def docker_up() -> Iterator[str | None]:
    with docker_daemon() as why:
        yield why


@pytest.fixture(params=["podman", "docker"])
def engine(request: pytest.FixtureRequest) -> str:
    """Each engine in turn; a test skips with the reason where one cannot run here."""
    name: str = request.param
    why = request.getfixturevalue("docker_up") if name == "docker" else answers(name)
    if why is not None:
        pytest.skip(why)
    return name
