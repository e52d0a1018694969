"""SIGTERM and Ctrl-C as requests: the first asks training to stop after its current step, a second Ctrl-C aborts.

Inside :class:`StopOnSignal` neither signal raises in the middle of a step or of a save: the
handler only records the request, which the trainer polls after each step (then it writes
``last.pt`` and raises ``Interrupted``). A second Ctrl-C raises :class:`Aborted` (a KeyboardInterrupt) at once; an
atomic write interrupted that way removes its temporary file, so the last complete ``last.pt``
stays. Exit codes follow the shell's convention: 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class Aborted(KeyboardInterrupt):
    """The second Ctrl-C: stop at once (a KeyboardInterrupt, so everything that cleans up on one still does)."""


class StopOnSignal:
    """Install the handlers for the duration of a ``with`` block; ``requested()`` names the first signal seen."""

    def __init__(self) -> None:
        self._signal: str | None = None
        self._previous: dict[int, object] = {}

    def requested(self) -> str | None:
        return self._signal

    def _handle(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if self._signal is not None and name == "SIGINT":
            raise Aborted
        if self._signal is None:
            self._signal = name

    def __enter__(self) -> StopOnSignal:
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


#: What schedulers send to stop or pre-empt a job (Slurm and submitit: SIGUSR2 requeues, SIGTERM ends).
_HELD = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


@contextlib.contextmanager
def held_during_write() -> Iterator[None]:
    """Hold the scheduler's signals until the block ends, then deliver them.

    Their handlers may exit at once (submitit's requeue calls ``sys.exit``); run in the middle of
    ``torch.save`` that turns into torch's own error, the job fails instead of being requeued.
    Ctrl-C is not held (a second one aborts at once; the write then removes its temporary file).
    Off the main thread, or with a handler installed outside Python, nothing is held.
    """
    previous = {number: signal.getsignal(number) for number in _HELD}
    if threading.current_thread() is not threading.main_thread() or None in previous.values():
        yield
        return
    seen: list[int] = []
    for number in _HELD:
        signal.signal(number, lambda number, frame: seen.append(number))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(seen):
            signal.raise_signal(number)
