"""recloop: a closed-loop recommendation platform (see README.md)."""

__version__ = "0.1.0"
