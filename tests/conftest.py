"""Shared fixtures: small real data and an isolated slimkit cache per test session."""

import pytest
import torch

from slimkit.data import load_digits


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SLIMKIT_CACHE", str(tmp_path_factory.mktemp("slimkit-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits: real data, small enough for training in seconds."""
    return load_digits(seed=0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
