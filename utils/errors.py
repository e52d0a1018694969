"""Errors a user can fix: the CLI prints their one-line message and exits with code 2."""


class ConfigError(ValueError):
    """A configuration key holds a value the project cannot use."""


class DataError(ValueError):
    """A dataset file or folder is missing or malformed."""


class NumericalFault(RuntimeError):
    """A loss or gradient became NaN/Inf: the trial stops, keeping its last good checkpoints."""


class TrialsFailed(RuntimeError):
    """No trial finished, or some submitted jobs failed: the command says so in one line (exit code 1)."""
