"""Fixtures several test modules share."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Small networks run fastest on one thread on the shared 2-core CI machines; the count is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
