"""User-facing errors: the CLI prints their message (which names the file and the problem) instead of a traceback."""


class StemJepaError(Exception):
    """An error caused by the user's input or environment, with a message meant for the user."""


def printable(text: str) -> str:
    """`text` with control characters (a NUL, a newline) and undecodable bytes escaped: a message stays one printable line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class AudioError(StemJepaError):
    """An audio file that cannot be read, decoded or used."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{printable(self.path)}: {problem}")


class DataError(StemJepaError):
    """A dataset, song folder or metadata file that is missing or malformed."""


class ConfigError(StemJepaError):
    """An unknown config name, key or value."""


class CheckpointError(StemJepaError):
    """A checkpoint that is missing, corrupt or incompatible."""
