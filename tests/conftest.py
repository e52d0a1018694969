"""Fixtures shared by the test rooms."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: small tensors run faster, OpenMP does not stall on two shared cores, and
    float summation follows the order of the one-thread worker processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
