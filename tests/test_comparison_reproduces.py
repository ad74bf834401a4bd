"""The committed comparison is what today's code produces.

Reruns the first rounds of one seed of the cheapest strategies that between them cover every
family the comparison runs (no model, a stochastic sampler over per-sample scores, BatchBALD's
joint scoring, embeddings, EPIG's target scores) exactly as the `campaign` stage of dvc.yaml
runs them, and compares their learning curves and batch evidence with the committed files,
column by column as written (timings aside). A round's seed depends on the campaign seed and
the round number only, so the first rounds of a shorter campaign are the first rounds of the
committed one. Any change to a campaign's result fails here until the stages are rerun
(`dvc repro`) and their outputs committed.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "data" / "benchmark" / "campaigns"
SEED = 0
ROUNDS = 3  # of the committed 15: enough for the model, the scores and the batches to move
FAMILIES = {
    "random": "no model in the selection",
    "power-bald": "a stochastic sampler over per-sample BALD scores",
    "batchbald": "joint BatchBALD over the top candidates",
    "badge": "gradient embeddings",
    "power-epig": "EPIG against target inputs drawn from the pool",
}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    # Seconds differ from machine to machine and run to run; everything else must not.
    return [{k: v for k, v in row.items() if not k.startswith("seconds_")} for row in rows]


@pytest.fixture(scope="module")
def rerun(prefect_harness, tmp_path_factory):
    from baldflow.comparison.campaigns import _QUIET_TASK_RUNS
    from baldflow.comparison.config import load_benchmark
    from baldflow.workspace.repo import OFFLINE_ENVIRONMENT

    bench = load_benchmark(ROOT / "params.yaml")
    initial = bench.initial_per_class * 10  # digits has ten classes
    short = bench.model_copy(update={"label_budget": initial + (ROUNDS - 1) * bench.batch_size})
    assert short.rounds(10) == ROUNDS
    patch = pytest.MonkeyPatch()
    for key, value in {**OFFLINE_ENVIRONMENT, **_QUIET_TASK_RUNS}.items():
        patch.setenv(key, value)
    yield short, tmp_path_factory.mktemp("comparison-rerun")
    patch.undo()


@pytest.mark.parametrize("strategy", list(FAMILIES))
def test_committed_campaign_is_what_the_code_produces(rerun, strategy):
    from baldflow.comparison.campaigns import run_one

    bench, scratch = rerun
    committed = _rows(COMMITTED / f"{strategy}-seed{SEED}.csv")
    run_one(
        bench,
        strategy,
        SEED,
        project_root=scratch / strategy,
        out_dir=scratch / strategy / "out",
        scratch=scratch / strategy / "workspaces",
    )
    produced = _rows(scratch / strategy / "out" / f"{strategy}-seed{SEED}.csv")
    assert len(produced) == ROUNDS
    for number, (ours, theirs) in enumerate(zip(produced, committed[:ROUNDS], strict=True)):
        differing = {k: (ours[k], theirs.get(k)) for k in ours if ours[k] != theirs.get(k)}
        assert not differing, (
            f"{strategy} seed {SEED}, round {number + 1} ({FAMILIES[strategy]}): today's code "
            f"gives (produced, committed) {differing}; rerun the comparison (dvc repro) and "
            f"commit what it writes"
        )
