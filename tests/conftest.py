"""Shared test setup: telemetry off, one Prefect test server per session, tiny campaigns."""

from __future__ import annotations

import copy
import os
import tempfile

from baldflow.workspace.repo import OFFLINE_ENVIRONMENT

# These must be set before prefect, mlflow or dvc are imported: prefect reads its settings once.
_PREFECT_HOME = tempfile.mkdtemp(prefix="baldflow-test-prefect-")
os.environ.update(OFFLINE_ENVIRONMENT, PREFECT_HOME=_PREFECT_HOME)
# A server configured in the developer's shell must not receive test runs.
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402

# The smallest campaign that still exercises every step: digits subsampled, a 3-epoch MLP, K=4.
TINY_PARAMS = {
    "campaign": {"name": "tiny", "seed": 3, "rounds": 3, "initial_per_class": 1},
    "data": {"source": "digits", "options": {"pool_size": 300}},
    "model": {"name": "mlp", "dropout": 0.5},
    "training": {
        "max_epochs": 3,
        "epoch_samples": 128,
        "patience": 2,
        "eval_mc_samples": 3,
        "device": "cpu",
    },
    "acquisition": {"strategy": "power-bald", "batch_size": 5, "mc_samples": 4},
}


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The test models are tiny: a second intra-op thread only adds synchronisation, and when
    anything else runs on the two cores, OpenMP oversubscription slows torch several-fold."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_params() -> dict:
    return copy.deepcopy(TINY_PARAMS)


@pytest.fixture(scope="session")
def tiny_defaults() -> dict:
    """TINY_PARAMS for fixtures wider than a function; copy before changing it."""
    return copy.deepcopy(TINY_PARAMS)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session; yields its API URL.

    Subprocesses that should use it get PREFECT_API_URL set to this URL, which also covers the
    "configured server" path of the flows.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield PREFECT_API_URL.value()


def pytest_configure(config):
    # DVC 3.67 trips a deprecation in its own trie dependency on every add; not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:dvc.*")
