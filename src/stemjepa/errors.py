"""User-facing errors: the CLI prints their message (which names the file and the problem) instead of a traceback."""


class StemJepaError(Exception):
    """An error caused by the user's input or environment, with a message meant for the user."""


class AudioError(StemJepaError):
    """An audio file that cannot be read, decoded or used."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DataError(StemJepaError):
    """A dataset, song folder or metadata file that is missing or malformed."""


class ConfigError(StemJepaError):
    """An unknown config name, key or value."""


class CheckpointError(StemJepaError):
    """A checkpoint that is missing, corrupt or incompatible."""
