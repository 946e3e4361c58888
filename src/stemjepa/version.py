"""The package version, in a module that imports nothing (the model exporter and the index record it)."""
__version__ = "0.1.0"
