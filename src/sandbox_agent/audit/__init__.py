"""The per-job audit record's format, shared by the pilot, the broker and the CLI."""
