"""Run one benchmark campaign (a strategy and a seed) through the campaign flow in a throwaway
workspace, and keep only its learning curve and summary."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from baldflow.comparison.config import BenchmarkConfig, campaign_params
from baldflow.comparison.curves import STEP_METRICS, Curve, summarize_campaign
from baldflow.config import ConfigError
from baldflow.workspace.repo import offline_environment

# Eighteen campaigns of ~16 rounds print ~3,000 task lines at INFO; the flow's one line per
# round (accuracy, acquired, seconds) is the progress worth seeing.
_QUIET_TASK_RUNS = {"PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "WARNING"}


class CampaignFailedError(RuntimeError):
    """The campaign flow of a benchmark run raised; the cause is chained, the workspace kept.

    `workspace` is the campaign's workspace, left in place for a look at its ledger, MLflow
    runs and Prefect logs.
    """

    def __init__(self, message: str, workspace: Path):
        super().__init__(message)
        self.workspace = workspace


def default_scratch() -> Path:
    """Where throwaway workspaces and the shared Prefect home live ($BALDFLOW_BENCH_SCRATCH)."""
    env = os.environ.get("BALDFLOW_BENCH_SCRATCH")
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / "baldflow-benchmark"


def default_tracking_uri(project_root: str | Path) -> str:
    from baldflow.workspace.tracking import local_tracking_uri

    return local_tracking_uri(Path(project_root) / "mlflow")


def curve_paths(
    out_dir: str | Path, strategy: str, seed: int, variant: str = ""
) -> tuple[Path, Path]:
    """The curve CSV and summary JSON of one campaign (the outputs of its dvc stage):
    `<strategy>[-<variant>]-seed<seed>`; the coldness ablation's variant is `beta<b>`."""
    name = f"{strategy}-{variant}" if variant else strategy
    # Not with_suffix: a beta of 0.25 would read as the suffix ".25-seed0".
    stem = f"{name}-seed{seed}"
    return Path(out_dir) / f"{stem}.csv", Path(out_dir) / f"{stem}.json"


def coldness_variant(coldness: float | str) -> str:
    """`beta<b>`, b as short as it reads (0.25, 1, 16): the ablation's file-name part."""
    return f"beta{float(coldness):g}"


def _num_classes(bench: BenchmarkConfig) -> int:
    from baldflow.data import load_source

    splits = load_source(bench.data.source, root=bench.data.root, seed=0, **bench.data.options)
    return splits.num_classes


def load_campaign_flow(workspace: str | Path):
    """The campaign flow, imported only once the environment suits a run in `workspace`.

    Prefect reads its settings once, at import: telemetry off, its home and quieter task logs
    must be in the environment before that, as `baldflow run` does it. A PREFECT_HOME set
    already (run_one's shared one) is kept.
    """
    offline_environment(workspace)
    for key, value in _QUIET_TASK_RUNS.items():
        os.environ.setdefault(key, value)
    from baldflow.flows.campaign import campaign_flow

    return campaign_flow


def _ensure_experiment(tracking_uri: str, experiment: str, artifact_root: Path | None) -> None:
    """Create the experiment once, before campaigns run, with artifacts beside the store.

    Campaigns run two at a time on a fresh project: both would create the SQLite store, and its
    migrations collide ("table _alembic_tmp_experiments already exists"). The first holds a
    lock beside the store while it creates it; the other waits, then finds it made.
    """
    import fcntl

    from mlflow.tracking import MlflowClient

    from baldflow.workspace.tracking import ensure_experiment

    if artifact_root is None:
        ensure_experiment(MlflowClient(tracking_uri=tracking_uri), experiment, artifact_root)
        return
    artifact_root.parent.mkdir(parents=True, exist_ok=True)
    with (artifact_root.parent / ".create.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also on a crash
        ensure_experiment(MlflowClient(tracking_uri=tracking_uri), experiment, artifact_root)


def _parent_run_id(tracking_uri: str, experiment: str, campaign: str) -> str | None:
    from mlflow.tracking import MlflowClient

    from baldflow.workspace.tracking import TAG_CAMPAIGN, TAG_KIND

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{TAG_CAMPAIGN}` = '{campaign}' and tags.`{TAG_KIND}` = 'campaign'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _step_metrics(tracking_uri: str, experiment: str, campaign: str) -> dict[int, dict]:
    """Per round, the metrics of its MLflow run that the rounds summary lacks: scoring and
    selection seconds and the batch-quality evidence (STEP_METRICS). They go into the curve
    CSV, so the report reads files only, never MLflow."""
    from mlflow.tracking import MlflowClient

    from baldflow.workspace.tracking import TAG_CAMPAIGN, TAG_KIND, TAG_ROUND

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{TAG_CAMPAIGN}` = '{campaign}' and tags.`{TAG_KIND}` = 'round'",
        max_results=10000,
    )
    out: dict[int, dict] = {}
    for run in runs:
        if run.info.status != "FINISHED":
            continue
        metrics = run.data.metrics
        out[int(run.data.tags[TAG_ROUND])] = {k: metrics[k] for k in STEP_METRICS if k in metrics}
    return out


def _log_summary(
    tracking_uri: str, run_id: str, summary: dict[str, Any], tags: dict[str, str]
) -> None:
    """Put the campaign's benchmark numbers on its parent run, so `mlflow ui` compares them."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    for key in ("auc", "final_accuracy", "acquisition_seconds", "select_seconds", "train_seconds"):
        value = summary.get(key)
        if value is not None:
            client.log_metric(run_id, f"benchmark.{key}", float(value))
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def run_one(
    bench: BenchmarkConfig,
    strategy: str,
    seed: int,
    *,
    project_root: str | Path = ".",
    out_dir: str | Path = "data/benchmark/campaigns",
    scratch: str | Path | None = None,
    keep_workspace: bool = False,
    coldness: float | None = None,
    variant: str | None = None,
) -> dict[str, Any]:
    """Run one campaign through the campaign flow in a fresh workspace; write its curve and
    summary.

    `coldness` overrides benchmark.coldness for this campaign (the coldness ablation); its files
    are then named `<strategy>-beta<b>-seed<s>` (`variant` names them otherwise: dvc.yaml passes
    the grid value as it renders it, so the names match its outs exactly). The override is part
    of the campaign's fingerprint, so MLflow keeps each beta's runs apart.

    Returns the summary (also written as JSON next to the curve CSV). A campaign that fails
    raises CampaignFailedError with the flow's exception as its cause and keeps its workspace.
    """
    started = time.perf_counter()
    if coldness is not None:
        if not (coldness >= 0 and math.isfinite(coldness)):
            raise ConfigError(f"--coldness must be a finite number >= 0, got {coldness!r}")
        bench = bench.model_copy(update={"coldness": float(coldness)})
        if variant is None:
            variant = coldness_variant(coldness)
    variant = variant or ""
    # MLflow and DVC read theirs at import as well, and they are imported before the workspace
    # exists; the flow gets the rest from load_campaign_flow.
    offline_environment()
    project_root = Path(project_root).resolve()
    scratch = Path(scratch) if scratch is not None else default_scratch()
    scratch.mkdir(parents=True, exist_ok=True)
    # One Prefect home for all benchmark campaigns: an empty home costs a slower first start.
    os.environ.setdefault("PREFECT_HOME", str((scratch / "prefect-home").resolve()))

    # The data first: a data set that is not installed fails here, before any store is made.
    num_classes = _num_classes(bench)
    tracking_uri = bench.mlflow_uri or default_tracking_uri(project_root)
    if bench.mlflow_uri is None:
        _ensure_experiment(tracking_uri, bench.experiment, project_root / "mlflow" / "artifacts")
    stamp = time.strftime("%m%d%H%M%S", time.gmtime())
    params = campaign_params(
        bench,
        strategy,
        seed,
        num_classes=num_classes,
        mlflow_uri=tracking_uri,
        suffix=stamp,
    )
    name = params["campaign"]["name"]
    workspace = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=scratch))
    print(
        f"benchmark: {strategy} seed {seed}: {params['campaign']['rounds']} rounds of "
        f"{bench.batch_size} in {workspace}",
        flush=True,
    )
    try:
        campaign_flow = load_campaign_flow(workspace)
        try:
            campaign_flow(workspace=str(workspace), params=params, campaign=name)
        except Exception as exc:
            raise CampaignFailedError(
                f"campaign {name!r} ({strategy}, seed {seed}) failed: {type(exc).__name__}: "
                f"{exc}; its workspace is kept at {workspace}",
                workspace,
            ) from exc
        from baldflow.workspace import Workspace

        curve = Curve.from_rounds(
            Workspace(workspace).rounds_summary(name),
            _step_metrics(tracking_uri, bench.experiment, name),
        )
    except BaseException:
        keep_workspace = True
        raise
    finally:
        if not keep_workspace:
            shutil.rmtree(workspace, ignore_errors=True)

    summary = summarize_campaign(curve, bench.target_accuracy)
    # labels_to_target depends on the target, which the report owns; keep it out of here so a
    # new target re-runs only the report.
    summary.pop("labels_to_target")
    run_id = _parent_run_id(tracking_uri, bench.experiment, name)
    if run_id is not None:
        _log_summary(
            tracking_uri,
            run_id,
            summary,
            {
                "benchmark.strategy": strategy,
                "benchmark.seed": str(seed),
                "benchmark.fingerprint": bench.fingerprint(),
            },
        )
    record = {
        "strategy": strategy,
        "seed": seed,
        "coldness": bench.coldness,
        "campaign": name,
        "mlflow_run_id": run_id,
        "tracking_uri": tracking_uri,
        "experiment": bench.experiment,
        **summary,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    # DVC's metrics reader refuses NaN (a mean over rounds that logged nothing): null instead.
    record = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
    curve_csv, summary_json = curve_paths(out_dir, strategy, seed, variant)
    curve.write_csv(curve_csv)
    summary_json.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    print(
        f"benchmark: {strategy} seed {seed}: final accuracy {summary['final_accuracy']:.3f} at "
        f"{summary['final_labeled']} labels, AUC {summary['auc']:.3f}, acquisition "
        f"{summary['acquisition_seconds']:.2f} s/round (select {summary['select_seconds']:.3f} s), "
        f"{record['wall_seconds']:.0f} s in all",
        flush=True,
    )
    return record


def run_all(
    bench: BenchmarkConfig,
    *,
    project_root: str | Path = ".",
    out_dir: str | Path = "data/benchmark/campaigns",
    scratch: str | Path | None = None,
    keep_workspace: bool = False,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Every strategy x seed of `bench`, one after another, for a config DVC does not run
    (benchmarks/configs/*.yaml). A campaign whose summary JSON exists is skipped unless `force`,
    so an interrupted run picks up where it stopped; the first failure stops the run."""
    records = []
    for strategy in bench.strategies:
        for seed in bench.seeds:
            _, summary_json = curve_paths(out_dir, strategy, seed)
            if summary_json.exists() and not force:
                print(f"benchmark: {strategy} seed {seed}: done already ({summary_json})")
                continue
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            records.append(
                run_one(
                    bench,
                    strategy,
                    seed,
                    project_root=project_root,
                    out_dir=out_dir,
                    scratch=scratch,
                    keep_workspace=keep_workspace,
                )
            )
    return records
