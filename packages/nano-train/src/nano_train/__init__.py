"""Nano reference model and training toolkit (filled by its own issue)."""
__version__ = "0.1.0"
