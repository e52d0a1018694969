"""What every command-line entry point shares: console logging and errors mapped to exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable

from utils.errors import ConfigError, DataError
from utils.logging import setup_console

#: Exit code of a user-fixable problem (bad config, missing data): one line, no traceback.
EXIT_USER_ERROR = 2


def main_guard(body: Callable[[], int | None]) -> int:
    """Run ``body``; a ConfigError/DataError prints ``error: <message>`` and returns 2."""
    setup_console()
    try:
        return body() or 0
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
