"""Errors a user can act on. The CLI prints their message on one line and exits with code 2."""


class UserError(Exception):
    """Bad input or environment; the message says what to do about it."""


class RouteError(UserError, RuntimeError):
    """A routed normalization layer was run without a valid route."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, unsafe, or does not match the architecture."""


class ConfigError(UserError, ValueError):
    """A configuration value is out of range or unknown."""


class DiskFullError(UserError):
    """A file could not be written for lack of space; the file it was replacing (if any) is intact."""

    def __init__(self, path: object, needed: int, free: int) -> None:
        super().__init__(f"no space left to write {path}: it needs {_size(needed)} and its disk has {_size(free)} "
                         "free; free some space (or choose a folder on another disk) and run again")
        self.path, self.needed, self.free = path, needed, free

    def __reduce__(self) -> tuple:
        return type(self), (self.path, self.needed, self.free)


def _size(count: int) -> str:
    """``1536`` -> ``"1.5 KB"``."""
    value, unit = float(count), "bytes"
    for bigger in ("KB", "MB", "GB", "TB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{count} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
