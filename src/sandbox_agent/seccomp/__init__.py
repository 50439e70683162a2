"""System-call filtering: OCI/Docker JSON profiles, read, checked and compiled."""
