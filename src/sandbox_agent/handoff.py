"""The frame codec moved to ``sandbox_agent.wrapper.handoff``, with everything else that
runs inside the sandbox. This name stays for older imports: it is that very module
(the same object, so a patch through either name is seen by both)."""

import sys

from sandbox_agent.wrapper import handoff as _moved

sys.modules[__name__] = _moved
