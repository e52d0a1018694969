"""Fixtures shared by the test rooms."""

import os
from collections.abc import Iterator

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores: one thread each
    os.environ["OMP_NUM_THREADS"] = "1"  # for the commands the tests start
    torch.set_num_threads(1)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: small tensors run faster, OpenMP does not stall on two shared cores, and
    float summation follows the order of the one-thread worker processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def console_closed_after_each_test() -> Iterator[None]:
    """The root handlers a command's ``setup_console`` installed write to that test's captured stderr;
    removed after the test, so a later test's logging does not write to a closed stream."""
    import logging

    yield
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if type(handler) is logging.StreamHandler:  # logging.basicConfig's (pytest's own are subclasses)
            root.removeHandler(handler)
