"""The attack probes moved to ``sandbox_agent.wrapper.probe``, with everything else that
runs inside the sandbox. This name stays for older imports: it is that very package."""

import sys

from sandbox_agent.wrapper import probe as _moved

sys.modules[__name__] = _moved
