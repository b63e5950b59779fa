"""A plugin-based experiment framework for the classic recurrent-network tutorials."""

__version__ = "0.1.0"
