import pytest


@pytest.fixture(autouse=True)
def _one_thread():
    """The machines these run on are small and shared: one core per test."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
