"""What every command-line entry point shares: console logging and errors mapped to exit codes.

A problem the user can fix (config, data, checkpoint) is one line, ``error: <message>``, and
exit code 2, never a traceback. A diverged run that was asked to stop the experiment
(``on_trial_failure: stop``) is one line and exit code 1. An interruption exits with 130
(Ctrl-C) or 143 (SIGTERM) after one line saying how to resume.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from utils.errors import ConfigError, DataError, NumericalFault
from utils.logging import setup_console
from utils.signals import EXIT_CODES

#: Exit code of a user-fixable problem (bad config, missing data): one line, no traceback.
EXIT_USER_ERROR = 2
EXIT_FAILED = 1


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors follow the contract: one line, ``error: <message>``, exit code 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def one_line(error: BaseException) -> str:
    """The error's message on one line: a DataLoader worker re-raises it with its traceback, whose last line is the message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(error).__name__
    last = lines[-1]
    prefix = f"{type(error).__module__}.{type(error).__name__}: "
    return last.removeprefix(prefix).removeprefix(f"{type(error).__name__}: ")


def main_guard(body: Callable[[], int | None]) -> int:
    """Run ``body``; user errors print ``error: <message>`` and return 2 (see the module docstring)."""
    setup_console()
    try:
        return body() or 0
    except (ConfigError, DataError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except NumericalFault as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("aborted (second Ctrl-C); the last complete last.pt is kept", file=sys.stderr)
        return EXIT_CODES["SIGINT"]
