"""What bounds a job from outside the sandbox: its cgroup, and the agent's monitor."""
