"""Errors a user can act on. The CLI prints their message on one line and exits with code 2."""


class UserError(Exception):
    """Bad input or environment; the message says what to do about it."""


class RouteError(UserError, RuntimeError):
    """A routed normalization layer was run without a valid route."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, unsafe, or does not match the architecture."""


class ConfigError(UserError, ValueError):
    """A configuration value is out of range or unknown."""
