"""What every command-line entry point shares: console logging and errors mapped to exit codes.

A problem the user can fix (config, data, checkpoint) is one line, ``error: <message>``, and
exit code 2, never a traceback (under torchrun, each process that meets it prints it: a bad file
may be read by one rank only). A diverged run that was asked to stop the experiment
(``on_trial_failure: stop``), an experiment none of whose trials finished and submitted jobs that
failed are one line and exit code 1. An interruption exits with 130 (Ctrl-C) or 143 (SIGTERM)
after one line saying how to resume. A file-system error the checks before the work could not
foresee (a full disk, a read-only mount) is one line naming the file and exit code 2; a reader
that closes the pipe early (``| head``) ends the command quietly (141).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from utils.errors import ConfigError, DataError, NumericalFault, TrialsFailed
from utils.logging import setup_console
from utils.signals import EXIT_CODES, Aborted

#: Exit code of a user-fixable problem (bad config, missing data): one line, no traceback.
EXIT_USER_ERROR = 2
EXIT_FAILED = 1
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a pipe closed early
#: OSErrors the user fixes (a full disk or quota, a read-only mount, permissions, a vanished path):
#: one line, exit code 2, after the checks that run before the work could not foresee them.
_USER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT,
                          errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG})


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors follow the contract: one line, ``error: <message>``, exit code 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def path_arg(value: str) -> Path:
    """argparse ``type`` of a path flag: an empty string (which Path reads as ``.``) is refused."""
    if not value.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(value)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse ``type`` of an integer flag that must be ``minimum`` or more (a count, a time limit)."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value!r}")
        return number
    return parse


def add_launch_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, launcher_help: str) -> None:
    """The submitit flags of ``main_multi_trials.py`` and ``python -m engine.study`` (one definition for both)."""
    parser.add_argument("--launcher", choices=("none", "submitit"), default="none", help=launcher_help)
    parser.add_argument("--cluster", choices=("local", "slurm"), default="local",
                        help="where submitit runs the jobs: local processes, or a Slurm job array (default: local)")
    parser.add_argument("--slurm_partition", default=None, help="Slurm partition of the jobs")
    parser.add_argument("--gpus_per_trial", type=int_at_least(0), default=0, help="GPUs per job (default: 0)")
    parser.add_argument("--cpus_per_trial", type=int_at_least(1), default=None, help="CPUs per job (default: the cluster's)")
    parser.add_argument("--timeout_min", type=int_at_least(1), default=1440,
                        help="time limit of a job in minutes; a timed-out job is requeued and resumes (default: 1440)")
    parser.add_argument("--array_parallelism", type=int_at_least(1), default=64,
                        help="Slurm jobs of the array running at once (default: 64)")
    parser.add_argument("--submitit_folder", type=path_arg, default=Path("submitit_logs"),
                        help="folder of the jobs' logs and pickles (default: submitit_logs)")
    parser.add_argument("--no_wait", action="store_true",
                        help="return after submitting; collect the tables later with get_outputs.py or by rerunning the command")


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
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as error:
        if error.errno not in _USER_ERRNOS:  # anything else is a bug or an outage: keep its traceback
            raise
        where = f"'{error.filename}': " if error.filename else ""
        print(f"error: {where}{error.strerror or one_line(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (NumericalFault, TrialsFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except Aborted:
        print("aborted (second Ctrl-C); the last complete last.pt is kept", file=sys.stderr)
        return EXIT_CODES["SIGINT"]
    except KeyboardInterrupt:  # before training took the signal over (imports, data, evaluation)
        print("interrupted (Ctrl-C); finished work is kept, rerun the command to go on", file=sys.stderr)
        return EXIT_CODES["SIGINT"]


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not report the broken pipe again."""
    with contextlib.suppress(OSError, ValueError):  # a stdout without a file descriptor (captured) has no pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
