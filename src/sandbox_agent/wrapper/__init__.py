"""Code that runs inside the sandbox: it imports as little as possible."""
