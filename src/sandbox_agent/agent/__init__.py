"""The agent (JobAgent) side of a job: what it does outside the sandbox."""
