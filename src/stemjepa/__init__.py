"""stemjepa: zero-shot musical stem retrieval with JEPAs."""
__version__ = "0.1.0"
