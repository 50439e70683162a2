"""The agent hardens its own process: the kernel's answers, read back in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

PROGRAM = """
import json, os, time
from sandbox_agent.runtime.agentproc import harden, state
before = state()
harden()
after = state()
# an orphan: a child forks a grandchild and exits; the grandchild reports its parent
read, write = os.pipe()
child = os.fork()
if child == 0:
    if os.fork() == 0:
        time.sleep(0.3)
        os.write(write, str(os.getppid()).encode())
        os._exit(0)
    os._exit(0)
os.waitpid(child, 0)
parent = int(os.read(read, 32))
os.wait()
print(json.dumps({"before": before, "after": after, "orphan_parent": parent, "me": os.getpid()}))
"""


def test_harden_sets_undumpable_and_subreaper() -> None:
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                         timeout=30, check=True)  # fmt: skip
    report = json.loads(out.stdout)
    assert report["before"] == [True, False]  # a fresh process: dumpable, not a subreaper
    assert report["after"] == [False, True]
    # the orphaned grandchild came back to the agent, not to init
    assert report["orphan_parent"] == report["me"]
