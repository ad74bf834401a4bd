"""Shared test setup: telemetry off, one Prefect test server per session, tiny campaigns."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import tempfile

from baldflow.workspace.repo import OFFLINE_ENVIRONMENT

# These must be set before prefect, mlflow or dvc are imported: prefect reads its settings once.
_PREFECT_HOME = tempfile.mkdtemp(prefix="baldflow-test-prefect-")
os.environ.update(OFFLINE_ENVIRONMENT, PREFECT_HOME=_PREFECT_HOME)
# A server configured in the developer's shell must not receive test runs.
os.environ.pop("PREFECT_API_URL", None)
# pytest-xdist workers get COLUMNS=80 and LINES=24 from their controller; the output tests
# expect what a pipe gets (full-width tables), as in a run without workers.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)

# DVC and Prefect set up their logging once, at import, with handlers bound to the sys.stdout
# and sys.stderr of that moment. Imported here, that is pytest's session-long capture; imported
# first inside a test with capsys, it would be that test's buffer, closed after it, and every
# later record would fail to write (DVC's handler then raises LoggingException in whichever
# test logs next). prefect.main is what runs Prefect's setup_logging.
import dvc  # noqa: E402, F401
import prefect.main  # noqa: E402, F401
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


# The loggers DVC sets up (at import, and again in its in-process CLI, dvc.cli.main).
_LOGGERS_TO_RESTORE = ("dvc", "dvc_objects", "dvc_data")


@contextlib.contextmanager
def _process_state_restored():
    """Put os.environ and DVC's loggers back as they were: in-process CLI calls set environment
    variables (offline_environment, Prefect's logging levels) that must not reach the next test,
    which may be one that checks the environment or starts a subprocess with it."""
    environ = dict(os.environ)
    loggers = {}
    for name in _LOGGERS_TO_RESTORE:
        logger = logging.getLogger(name)
        loggers[name] = (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
    try:
        yield
    finally:
        for key in [key for key in os.environ if key not in environ]:
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        for name, (level, handlers, propagate, disabled) in loggers.items():
            logger = logging.getLogger(name)
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate = propagate
            logger.disabled = disabled


@pytest.fixture(autouse=True, scope="module")
def _module_leaves_no_process_state():
    """Module-scoped fixtures (a shared campaign) run CLI code before any test's own guard."""
    with _process_state_restored():
        yield


@pytest.fixture(autouse=True)
def _test_leaves_no_process_state():
    with _process_state_restored():
        yield


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


@pytest.fixture(scope="session")
def finished_tiny(tmp_path_factory, prefect_harness, tiny_defaults):
    """One uninterrupted three-round campaign of TINY_PARAMS (flow run named "test"), run once
    per session: (workspace, flow result, seconds it took). Read it, or take a copy to change
    (helpers.copy_workspace): a copy costs a fraction of a second, a campaign many seconds."""
    import time

    from helpers import run_flow

    workspace = tmp_path_factory.mktemp("finished-tiny") / "ws"
    started = time.perf_counter()
    result = run_flow(workspace, tiny_defaults, campaign="test")
    return workspace, result, time.perf_counter() - started


def pytest_configure(config):
    # DVC 3.67 trips a deprecation in its own trie dependency on every add; not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:dvc.*")


# -- Tiers (pyproject registers the markers). A test's fixtures say what it needs; the table
# below adds what a module does without a fixture (a `baldflow run` in a subprocess, a Dask
# cluster, a killed process). A test with none of the heavy needs is `pure`. --

HEAVY_MARKERS = ("flow", "servers", "crash", "browser", "gpu", "slow", "smoke")

FIXTURE_MARKERS = {
    "prefect_harness": ("flow",),
    "finished_tiny": ("flow",),
    "team_stack": ("servers",),
    "team_mlflow_auth": ("servers",),
    "team_auth_stack": ("servers",),
    "label_studio_server": ("servers",),
    "swift_store": ("servers",),
    "cuda_device": ("gpu",),
    # An MLflow store of its own (creating one runs MLflow's migrations: seconds).
    "tracker": ("slow",),
    "audited": ("slow",),
}

# Markers for every test of a module.
MODULE_MARKERS = {
    "test_faults.py": ("crash", "flow"),
    "test_signals.py": ("crash", "flow"),
    "test_mlflow_ui.py": ("browser", "flow"),
    "test_label_studio_browser.py": ("browser",),
    "test_s3.py": ("servers",),
    "test_object_store_pools.py": ("servers",),
    "test_dask_cluster.py": ("servers",),
    "test_shard_faults.py": ("servers",),
    "test_scale.py": ("servers",),  # Dask clusters
    "test_stack.py": ("servers",),
    "test_stack_supervision.py": ("servers",),
    "test_serve.py": ("flow",),
    "test_smoke.py": ("smoke",),
}

# Markers for single tests (by name, without parameters), module by module. `slow`: nothing
# heavy, but seconds each: pip building the package, a fresh interpreter importing torch (the
# CLI, an import check), an MLflow store, a CNN over 3,000 images.
TEST_MARKERS = {
    "test_comparison.py": {
        "test_campaigns_started_together_on_a_fresh_project_share_one_store": ("flow",),
        "test_the_flow_is_imported_after_the_offline_environment": ("slow",),
    },
    "test_config.py": {"test_validating_a_campaign_imports_nothing_of_the_comparison": ("slow",)},
    "test_data.py": {
        "test_folder_of_600_images_loads_under_an_open_file_limit_of_256": ("slow",),
        "test_digits_are_read_without_importing_scikit_learn_and_equal_its_loader": ("slow",),
    },
    "test_deploy.py": {"test_deploy_refuses_without_a_persistent_server": ("slow",)},
    "test_output.py": {
        "test_report_draws_without_matplotlib": ("slow",),
        "test_printed_commands_run_in_a_shell_without_the_environment": ("slow",),
    },
    "test_packaging.py": {"test_building_the_package_warns_about_nothing": ("slow",)},
    "test_preflight.py": {
        "test_run_with_a_source_that_cannot_load_fails_in_one_line_before_prefect": ("slow",),
        "test_resuming_with_other_parameters_is_only_the_error": ("slow",),
    },
    "test_rounds.py": {
        "test_a_tracking_store_killed_while_being_created_does_not_break_the_next_start": (
            "crash",
        ),
        "test_flows_and_tasks_install_under_the_baldflow_namespace": ("slow",),
    },
    "test_serve.py": {"test_serve_runs_scheduled_cycles_one_round_each": ("servers",)},
    "test_sharded_selection.py": {"test_noise_is_identical_in_another_process": ("slow",)},
    "test_sharding.py": {
        "test_through_a_real_dask_cluster": ("servers",),
        "test_sharded_batch_equals_single_process": ("slow",),
    },
}


def _table_markers(item) -> set[str]:
    module = item.path.name
    name = getattr(item, "originalname", None) or item.name
    return {*MODULE_MARKERS.get(module, ()), *TEST_MARKERS.get(module, {}).get(name, ())}


def pytest_collection_modifyitems(config, items):
    for item in items:
        needs = _table_markers(item)
        for fixture in item.fixturenames:
            needs.update(FIXTURE_MARKERS.get(fixture, ()))
        needs.update(m.name for m in item.iter_markers() if m.name in HEAVY_MARKERS)
        for name in sorted(needs) or ["pure"]:
            item.add_marker(name)


@pytest.fixture
def cuda_device():
    """A CUDA device, or the test is skipped."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")


def pytest_unconfigure(config):
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


# -- The team stack (baldflow.stack.team): PostgreSQL + MLflow + Prefect servers, remotes. --


def _postgres_or_skip() -> None:
    """Skip where PostgreSQL is not installed (a developer's laptop); fail on CI, which
    installs it (.ci/run): a silently skipped team test there would hide a broken stack."""
    from baldflow.stack.postgres import PostgresNotInstalledError, find_bindir

    try:
        find_bindir()
    except PostgresNotInstalledError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs PostgreSQL for the team stack tests: {exc}")
        pytest.skip(f"the team stack needs PostgreSQL: {exc}")


@pytest.fixture(scope="session")
def team_stack():
    """One team stack for the session (no auth), in a temp dir under /tmp (the PostgreSQL
    account cannot enter pytest's 0700 /tmp/pytest-of-root). Yields the TeamStack: dir,
    mlflow_uri, prefect_api_url, git_remote, dvc_remote, postgres_url(db, driver=""),
    postgres_port/mlflow_port/prefect_port, timings. Stopped on every way out."""
    _postgres_or_skip()
    from baldflow.stack.team import StackError, stack_down, stack_up

    root = tempfile.mkdtemp(prefix="baldflow-test-stack-")
    try:
        yield stack_up(root)
    finally:
        with contextlib.suppress(StackError):
            stack_down(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def team_auth_stack():
    """A second team stack for the session, its MLflow server behind basic auth: the one
    members (`baldflow stack user add`) are made on. Yields the TeamStack (admin_password()
    reads the admin's password). Stopped on every way out."""
    _postgres_or_skip()
    from baldflow.stack.team import StackError, stack_down, stack_up

    root = tempfile.mkdtemp(prefix="baldflow-test-auth-stack-")
    try:
        yield stack_up(root, auth=True)
    finally:
        with contextlib.suppress(StackError):
            stack_down(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def team_mlflow_auth(team_auth_stack):
    """The authenticated stack's MLflow server: (uri, admin_username, admin_password)."""
    stack = team_auth_stack
    return stack.mlflow_uri, stack.admin_username, stack.admin_password()


# -- Label Studio (baldflow.stack.label_studio), for the label-studio oracle's tests. ------


@pytest.fixture(scope="session")
def label_studio_server():
    """One Label Studio server for the session, from its own virtual environment (built on
    first use; $BALDFLOW_LABEL_STUDIO_VENV names another), in a temp dir, stopped by PID on
    every way out. Yields the LabelStudioServer: url, token, username, password,
    document_root."""
    from baldflow.stack.label_studio import LabelStudioServer

    root = tempfile.mkdtemp(prefix="baldflow-test-label-studio-")
    server = LabelStudioServer(root)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# -- An S3-compatible store (baldflow.stack.swift): OpenStack Swift on loopback, shared by
# test_s3.py and test_object_store_pools.py. --


@pytest.fixture(scope="session")
def swift_venv():
    """Swift's own virtual environment (built into the cache on first use, 6-20 s)."""
    from baldflow.stack.swift import SwiftError, default_venv, ensure_venv

    try:
        return ensure_venv(default_venv())
    except SwiftError as exc:
        pytest.fail(f"could not build Swift's virtual environment: {exc}")


@pytest.fixture(scope="session")
def swift_store(tmp_path_factory, swift_venv):
    """One Swift S3 store for the session (3-8 s to start), on 127.0.0.1, stopped by PID on
    every way out; yields the SwiftS3 (endpoint_url, access_key, secret_key, client_env(),
    create_bucket). A test may stop and start it again (same port)."""
    import socket

    from baldflow.stack.swift import SwiftS3

    swift = SwiftS3(tmp_path_factory.mktemp("swift"), venv=swift_venv)
    swift.start()
    try:
        yield swift
    finally:
        ports = dict(swift.ports)
        swift.stop()

        def listening(port: int) -> bool:
            with socket.socket() as sock:
                sock.settimeout(0.5)
                return sock.connect_ex(("127.0.0.1", port)) == 0

        left = [server for server, port in ports.items() if listening(port)]
        assert not left, f"Swift servers still listen after stop(): {left}"
