"""Optimizer tests use tiny tensors: every one runs on one intra-op thread (``one_thread``)."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Applies the shared ``one_thread`` fixture to every test of this room."""
