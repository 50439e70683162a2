"""``python -m sandbox_agent`` runs the command line."""

from sandbox_agent.cli import main

if __name__ == "__main__":
    main()
