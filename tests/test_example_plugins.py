"""examples/baldflow-example, built and installed outside the venv, runs real campaigns through
its entry points and through import strings (the same batches), and is recorded and listed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from baldflow.workspace import Workspace
from baldflow.workspace.ledger import LedgerRow, read_ledger
from baldflow.workspace.tracking import TAG_CAMPAIGN, TAG_KIND, local_tracking_uri

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "baldflow-example"
PACKAGE, VERSION = "baldflow-example", "0.1.0"
ROUNDS, BATCH = 2, 10

BY_ENTRY_POINT = {
    "model": "example-residual-mlp",
    "source": "example-breast-cancer",
    "trainer": "example-weighted-cosine",
    "strategy": "example-power-margin-diverse",
}
BY_IMPORT_STRING = {
    "model": "baldflow_example.models:residual_mlp",
    "source": "baldflow_example.sources:BreastCancer",
    "trainer": "baldflow_example.trainers:weighted_cosine",
    "strategy": "baldflow_example.strategies:PowerMarginDiverse",
}
SETTING_OF = {
    "model": "model.name",
    "source": "data.source",
    "trainer": "training.trainer",
    "strategy": "acquisition.strategy",
}
# Small enough for two CPU cores: 569 rows, a 20-epoch MLP, K = 8.
QUICK = (
    "campaign.seed=7",
    f"campaign.rounds={ROUNDS}",
    "campaign.initial_per_class=5",
    f"acquisition.batch_size={BATCH}",
    "acquisition.mc_samples=8",
    "training.options.epochs=20",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example installed into a folder of its own (the venv is left as it is). It is built
    from a copy: pip builds in the source tree and would leave build/ and *.egg-info there."""
    root = tmp_path_factory.mktemp("example-package")
    source = root / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = root / "site"
    # The venv's setuptools, without build isolation: offline and about a second.
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--target", str(target), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert (target / f"baldflow_example-{VERSION}.dist-info").is_dir()
    return target


def baldflow(site: Path, *args: str, prefect: str | None = None) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter that finds the example (and its entry points) on
    PYTHONPATH, using the session's Prefect server when given."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    if prefect is not None:
        env["PREFECT_API_URL"] = prefect
    return subprocess.run(
        [sys.executable, "-m", "baldflow.cli", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def run_campaign(site: Path, workspace: Path, campaign: str, names: dict, prefect: str) -> Path:
    settings = [f"campaign.name={campaign}", *QUICK]
    settings += [f"{SETTING_OF[kind]}={name}" for kind, name in names.items()]
    args = [item for setting in settings for item in ("--set", setting)]
    done = baldflow(site, "run", "--workspace", str(workspace), *args, prefect=prefect)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return workspace


def acquired(workspace: Path, campaign: str) -> dict[int, list[LedgerRow]]:
    """The ledger's acquired rows by round, in pick order."""
    rows = read_ledger(Workspace(workspace).ledger_path(campaign))
    batches: dict[int, list[LedgerRow]] = {}
    for row in sorted((r for r in rows if r.round > 0), key=lambda r: (r.round, r.rank)):
        batches.setdefault(row.round, []).append(row)
    return batches


@pytest.fixture(scope="module")
def by_entry_point(site, prefect_harness, tmp_path_factory) -> Path:
    workspace = tmp_path_factory.mktemp("example-ep") / "ws"
    return run_campaign(site, workspace, "example-ep", BY_ENTRY_POINT, prefect_harness)


def test_a_campaign_runs_with_every_plug_in_by_its_entry_point(by_entry_point):
    from mlflow.tracking import MlflowClient

    workspace = by_entry_point
    batches = acquired(workspace, "example-ep")
    assert sorted(batches) == list(range(1, ROUNDS + 1))
    for rows in batches.values():
        assert len(rows) == BATCH
        assert all(re.fullmatch(r"bc-\d{4}", row.sample_id) for row in rows)
        assert {row.strategy for row in rows} == {BY_ENTRY_POINT["strategy"]}
    ids = [row.sample_id for rows in batches.values() for row in rows]
    assert len(set(ids)) == len(ids)

    # What was committed with the last round, not merely what lies in the work tree.
    ws = Workspace(workspace)
    record = yaml.safe_load(ws.git("show", "HEAD:data/example-ep/campaign.yaml"))
    assert set(BY_ENTRY_POINT) <= set(record.get("plugins", {})), record.get("plugins")
    for kind, name in BY_ENTRY_POINT.items():
        entry = record["plugins"][kind]
        assert entry["name"] == name
        assert (entry["package"], entry["version"]) == (PACKAGE, VERSION)
        assert re.fullmatch(r"[0-9a-f]{64}", entry["code_hash"] or ""), entry

    client = MlflowClient(tracking_uri=local_tracking_uri(workspace / "mlflow"))
    experiment = client.get_experiment_by_name("baldflow")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{TAG_CAMPAIGN}` = 'example-ep'"
    )
    rounds = [run for run in runs if run.data.tags[TAG_KIND] == "round"]
    assert rounds
    for run in rounds:
        trainer = {key for key in run.data.metrics if key.startswith("trainer.")}
        assert {"trainer.final_loss", "trainer.val_accuracy"} <= trainer, run.data.metrics


def test_import_strings_acquire_the_same_batches_as_entry_points(
    site, prefect_harness, by_entry_point, tmp_path
):
    workspace = run_campaign(
        site, tmp_path / "ws", "example-import", BY_IMPORT_STRING, prefect_harness
    )
    mine, theirs = acquired(workspace, "example-import"), acquired(by_entry_point, "example-ep")
    assert sorted(mine) == sorted(theirs) == list(range(1, ROUNDS + 1))
    for round_index in mine:
        assert [r.sample_id for r in mine[round_index]] == [
            r.sample_id for r in theirs[round_index]
        ]


@pytest.mark.slow
def test_plugins_lists_the_example_with_its_package_and_version(site):
    done = baldflow(site, "plugins")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in BY_ENTRY_POINT.values():
        line = next((ln for ln in done.stdout.splitlines() if ln.split()[:1] == [name]), None)
        assert line is not None, done.stdout
        assert f"{PACKAGE} {VERSION}" in line and "[entry point]" in line, line
