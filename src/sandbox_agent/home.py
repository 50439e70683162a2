"""Where the embedded default keeps its state (queue, token authority, outputs)."""

from __future__ import annotations

import os
from pathlib import Path

HOME_VARIABLE = "SANDBOX_AGENT_HOME"


def default_home() -> Path:
    """``$SANDBOX_AGENT_HOME``, else ``~/.local/share/sandbox-agent``."""
    configured = os.environ.get(HOME_VARIABLE)
    if configured:
        return Path(configured)
    return Path.home() / ".local" / "share" / "sandbox-agent"
