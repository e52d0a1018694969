"""Errors a user can fix: the CLI prints their one-line message and exits with code 2."""


class ConfigError(ValueError):
    """A configuration key holds a value the project cannot use."""


class DataError(ValueError):
    """A dataset file or folder is missing or malformed."""
