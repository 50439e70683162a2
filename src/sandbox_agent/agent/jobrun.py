"""Moved: the conversation with the JobWrapper is the sandbox layer's, runtime.jobrun
(the pilot's attempt and the selftest both use it). Kept for callers of the old place."""

from sandbox_agent.runtime.jobrun import (  # noqa: F401
    FINAL_FRAME_STATES,
    FRAME_STATES,
    KILL_STATES,
    LOG_CAP,
    MAX_FRAMES,
    PROGRESS_STATES,
    JobResult,
    handoff_fields,
    run_job,
)
