"""Runtimes: one module per runtime, each turning an effective policy into a launch plan."""
