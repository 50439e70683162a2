"""sandbox-agent: a two-layer grid pilot whose payloads cannot reach its credentials."""

__version__ = "0.1.0"
