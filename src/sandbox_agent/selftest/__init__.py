"""`sandbox-agent selftest` and the pilot's preflight: the attack probes run on the node,
in the pilot's own sandbox, with canary secrets planted where its real ones are."""
