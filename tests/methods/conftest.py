"""Fixtures of the method tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tensors as small as the golden tests' run ~20x faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
