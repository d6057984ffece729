"""The gateway's version, reported by /health and the run command."""

__version__ = "0.1.0"
