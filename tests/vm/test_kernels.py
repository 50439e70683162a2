"""The pilot on real kernels with a pure cgroup v2 hierarchy, as most worker nodes run.

This machine is cgroup v1; tests/vm/machine.py boots Debian's kernels in QEMU (6.1, and
5.10 with no landlock, no memory.peak and no cgroup.kill) and runs there, as root and
as an unprivileged pilot, each in a cgroup delegated to it: the tests of
tests/vm/inside (the pilot with its preflight, doctor, selftest, every kernel limit
exceeded by a real job, with and without nsdelegate) and the adversarial resource
tests. Their junit report comes back; each kernel's run is one test here. The machines
boot in the background while the rest of the suite runs (tests/vm/conftest.py)."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import pytest
from machine import KERNELS, RUNS, Result

PILOT = "test_the_pilot_runs_jobs_alone_in_its_delegated_cgroup_and_holds_every_limit"
BOTH = ("[agent-as-root]", "[agent-as-nobody]")
# A guest run that skipped these would prove nothing: each must have passed there.
REQUIRED = {
    "6.1": (
        *(f"{PILOT}[{who}-{how}]" for who in ("root", "nobody") for how in ("plain", "nsdelegate")),
        "test_swap_beyond_memory_is_the_policys_to_give[root]",
        "test_swap_beyond_memory_is_the_policys_to_give[nobody]",
        "test_doctor_and_selftest_alone_in_a_delegated_cgroup[root]",
        "test_doctor_and_selftest_alone_in_a_delegated_cgroup[nobody]",
        "test_doctor_names_the_processes_that_share_the_pilots_cgroup",
        *(f"test_fork_bomb_hits_the_pids_cap_and_the_agent_still_forks{p}" for p in BOTH),
        *(f"test_memory_past_the_cap_kills_the_job_not_the_agent{p}" for p in BOTH),
        *(f"test_memory_kill_of_the_whole_job_is_reported{p}" for p in BOTH),
        *(
            f"test_a_daemon_without_a_pid_namespace_is_killed_at_teardown_and_reported{p}"
            for p in BOTH
        ),
    ),
    "5.10": (
        f"{PILOT}[root-plain]",
        f"{PILOT}[nobody-nsdelegate]",
        "test_swap_beyond_memory_is_the_policys_to_give[nobody]",
        "test_doctor_names_the_processes_that_share_the_pilots_cgroup",
        *(f"test_fork_bomb_hits_the_pids_cap_and_the_agent_still_forks{p}" for p in BOTH),
        *(f"test_memory_past_the_cap_kills_the_job_not_the_agent{p}" for p in BOTH),
        *(f"test_memory_kill_of_the_whole_job_is_reported{p}" for p in BOTH),
        *(
            f"test_a_daemon_without_a_pid_namespace_is_killed_at_teardown_and_reported{p}"
            for p in BOTH
        ),
    ),
}


def outcomes(result: Result) -> dict[str, str]:
    """Each guest test's outcome: passed, failed (with its message) or skipped (why)."""
    report = result.out / "junit.xml"
    if not report.exists():
        return {}
    found = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        verdict = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                verdict = f"failed: {(child.get('message') or '')[:1500]}"
            elif child.tag == "skipped":
                verdict = f"skipped: {child.get('message')}"
        found[case.get("name", "?")] = verdict
    return found


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_the_pilot_on_a_cgroup_v2_kernel(kernel: str) -> None:
    result = RUNS.wait(kernel)
    if isinstance(result, str):
        pytest.skip(f"no {kernel} machine: {result}")
    try:
        found = outcomes(result)
    finally:
        shutil.rmtree(result.out.parent, ignore_errors=True)
    assert found, f"the guest reported nothing (status {result.status}):\n{result.log[-4000:]}" \
        f"\n{result.console[-2000:]}"  # fmt: skip
    failed = {name: verdict for name, verdict in found.items() if verdict.startswith("failed")}
    assert not failed, "\n".join(f"{n}: {v}" for n, v in failed.items()) + result.log[-6000:]
    missing = {n: found.get(n, "not run") for n in REQUIRED[kernel] if found.get(n) != "passed"}
    assert not missing, missing
    assert result.status == 0, result.log[-4000:]
