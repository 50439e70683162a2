"""Exit codes of every sandbox-agent command (documented in the README)."""

OK = 0  # done, the check passed, the job matched
FAILED = 1  # a job or a check failed (for example: Requirements not TRUE)
USAGE = 2  # bad usage or bad input: a malformed JDL, policy, certificate or option
ENVIRONMENT = 3  # this host cannot enforce what is required
