"""The campaign flow: run or resume the rounds of one active-learning campaign in a workspace.

Each round is a group of tasks (train, evaluate, score, select, label, version, track) whose
git commit marks it complete, so a killed run resumes at the last completed round.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Mapping
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from baldflow import steps
from baldflow.config import Config, validate
from baldflow.oracle import build_oracle
from baldflow.workspace import LedgerRow, Workspace, WorkspaceError, round_tag, workspace_lock
from baldflow.workspace.ledger import labeled_rows_from_ledger, labeled_text, md5_of_text
from baldflow.workspace.tracking import Tracker, local_tracking_uri
from tasks import (
    close_stale_flow_runs,
    evaluate_model,
    finish_campaign,
    label_batch,
    prepare_data,
    publish_batch,
    recover_workspace,
    score_pool,
    select_batch,
    start_campaign_tracking,
    start_round_run,
    track_round,
    train_model,
    version_round,
)


def _utc_now() -> str:
    return (
        dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def make_tracker(config: Config, workspace: Workspace) -> Tracker:
    if config.tracking.mlflow_uri:
        return Tracker(config.tracking.mlflow_uri, config.tracking.experiment, None)
    return Tracker(
        local_tracking_uri(workspace.mlflow_dir),
        config.tracking.experiment,
        workspace.mlflow_dir / "artifacts",
    )


def _flow_run_id() -> str:
    value = flow_run.id
    return str(value) if value else ""


def _committed_runs(workspace: Workspace, campaign: str) -> dict[str, dict[str, Any]]:
    """What git recorded of each committed round, by MLflow run id, to close killed runs."""
    out: dict[str, dict[str, Any]] = {}
    for row in workspace.rounds_summary(campaign):
        run_id = row.get("mlflow_run_id")
        if not run_id or int(row["round"]) == 0:
            continue
        tag = round_tag(campaign, int(row["round"]))
        metrics = {
            "test_accuracy": row.get("test_accuracy"),
            "test_nll": row.get("test_nll"),
            "train_size": row.get("train_size"),
            "labeled_size": row.get("labeled"),
            "acquired": row.get("acquired"),
            "seconds_compute": row.get("seconds_compute"),
        }
        out[run_id] = {
            "metrics": {k: float(v) for k, v in metrics.items() if v not in (None, "")},
            "tags": {
                "git.tag": tag,
                "git.commit": workspace.git("rev-parse", tag + "^{commit}").strip(),
                "dvc.labeled_set_md5": row.get("labeled_set_md5", ""),
            },
        }
    return out


def _quietly(call: Any, *args: Any) -> None:
    """Best-effort bookkeeping on an error path: never hide the original error."""
    with contextlib.suppress(Exception):
        call(*args)


class _Campaign:
    """The state one flow run carries from round to round."""

    def __init__(self, config: Config, workspace: Workspace, tracker: Tracker, logger: Any):
        self.config = config
        self.name = config.campaign.name
        self.workspace = workspace
        self.tracker = tracker
        self.logger = logger
        self.flow_run_id = _flow_run_id()
        self.parent_run_id = ""
        self.data: steps.CampaignData | None = None
        self.oracle = None
        self.timings: list[dict[str, float]] = []

    def labeled(self) -> list[tuple[str, int, int]]:
        return self.workspace.labeled(self.name)

    def check_consistency(self) -> None:
        """The labeled set on disk must be exactly what the ledger says; refuse otherwise."""
        from_ledger = labeled_rows_from_ledger(self.workspace.ledger(self.name))
        if from_ledger != self.labeled():
            raise WorkspaceError(
                f"campaign {self.name!r}: labeled.csv and ledger.csv disagree; "
                "the workspace was edited by hand"
            )

    def initial_round(self) -> None:
        assert self.data is not None
        seed = steps.round_seed(self.config.campaign.seed, 0)
        ids = list(self.data.initial_ids)
        labels = label_batch(quote(self.oracle), ids, 0)
        now = _utc_now()
        rows = [
            LedgerRow(
                campaign=self.name,
                round=0,
                sample_id=sid,
                label=label,
                strategy="initial",
                rank=rank,
                score=None,
                selection_probability=None,
                selection_key=None,
                seed=seed,
                acquired_at=now,
                mlflow_run_id=self.parent_run_id,
                prefect_flow_run_id=self.flow_run_id,
                labeled_set_md5="",
            )
            for rank, (sid, label) in enumerate(zip(ids, labels, strict=True))
        ]
        summary = {"round": 0, "train_size": 0, "labeled": len(rows), "acquired": len(rows)}
        commit = version_round(
            quote(self.workspace),
            self.name,
            0,
            quote(rows),
            summary,
            self.config.identity(),
            {"MLflow-Run": self.parent_run_id, "Prefect-Flow-Run": self.flow_run_id},
        )
        self.logger.info(
            "round 0: initial labeled set of %d samples committed as %s", len(rows), commit.tag
        )

    def run_round(self, round_index: int) -> dict[str, Any] | None:
        """One acquisition round; None when the pool is empty and the campaign is over."""
        assert self.data is not None
        started = time.perf_counter()
        config = self.config
        labeled = self.labeled()
        remaining = len(self.data.splits.pool_ids) - len(labeled)
        if remaining <= 0:
            self.logger.info(
                "the pool is empty after round %d: all %d samples are labeled; campaign ends",
                round_index - 1,
                len(labeled),
            )
            return None
        seed = steps.round_seed(config.campaign.seed, round_index)
        training_set = {
            "name": f"{self.name}/labeled.csv",
            "md5": md5_of_text(labeled_text(labeled)),
            "rows": len(labeled),
            "path": str(self.workspace.labeled_path(self.name).relative_to(self.workspace.root)),
            "rev": round_tag(self.name, round_index - 1),
        }
        run_id = start_round_run(
            quote(self.tracker),
            self.parent_run_id,
            self.name,
            round_index,
            {"round": round_index, "seed": seed, "train_size": len(labeled), **config.identity()},
            training_set,
        )
        try:
            return self._acquire(round_index, run_id, seed, started, labeled, remaining)
        except BaseException as exc:
            # The round will run again from its start; its run must not look finished or live.
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            _quietly(self.tracker.end, run_id, status)
            raise

    def _acquire(
        self,
        round_index: int,
        run_id: str,
        seed: int,
        started: float,
        labeled: list[tuple[str, int, int]],
        remaining: int,
    ) -> dict[str, Any]:
        config = self.config
        a = config.acquisition
        labeled_ids = {sid for sid, _, _ in labeled}
        data = quote(self.data)
        trained = train_model(
            config, data, quote([(sid, y) for sid, y, _ in labeled]), seed, round_index
        )
        evaluation = evaluate_model(config, data, quote(trained), seed, round_index)
        scored = score_pool(config, data, quote(trained), quote(labeled_ids), seed, round_index)
        selected = select_batch(config, data, quote(scored), seed, round_index)
        if selected.note:
            self.logger.warning("round %d: %s", round_index, selected.note)
        t_label = time.perf_counter()
        labels = label_batch(quote(self.oracle), selected.sample_ids, round_index)
        seconds_label = time.perf_counter() - t_label

        now = _utc_now()
        rows = [
            LedgerRow(
                campaign=self.name,
                round=round_index,
                sample_id=sid,
                label=label,
                strategy=a.strategy,
                rank=rank,
                score=score,
                selection_probability=prob,
                selection_key=key,
                seed=seed,
                acquired_at=now,
                mlflow_run_id=run_id,
                prefect_flow_run_id=self.flow_run_id,
                labeled_set_md5="",
            )
            for rank, (sid, label, score, prob, key) in enumerate(
                zip(
                    selected.sample_ids,
                    labels,
                    selected.scores,
                    selected.probabilities,
                    selected.keys,
                    strict=True,
                )
            )
        ]
        seconds_compute = (
            trained.seconds + evaluation["seconds"] + scored.seconds + selected.seconds
        )
        summary = {
            "round": round_index,
            "train_size": len(labeled),
            "labeled": len(labeled) + len(rows),
            "acquired": len(rows),
            "test_accuracy": evaluation["test_accuracy"],
            "test_nll": evaluation["test_nll"],
            "seconds_compute": seconds_compute,
            "seconds_acquisition": scored.seconds + selected.seconds,
            "mlflow_run_id": run_id,
        }
        commit = version_round(
            quote(self.workspace),
            self.name,
            round_index,
            quote(rows),
            summary,
            config.identity(),
            {"MLflow-Run": run_id, "Prefect-Flow-Run": self.flow_run_id},
        )
        acquired = [
            {
                "rank": row.rank,
                "sample_id": row.sample_id,
                "label": row.label,
                "score": row.score,
                "selection_probability": row.selection_probability,
                "selection_key": row.selection_key,
            }
            for row in rows
        ]
        publish_batch(
            self.name,
            round_index,
            quote(acquired),
            f"Samples acquired by {a.strategy} in round {round_index} of {self.name} "
            f"(git tag {commit.tag}, MLflow run {run_id})",
        )
        metrics = {
            "test_accuracy": evaluation["test_accuracy"],
            "test_nll": evaluation["test_nll"],
            "train_size": len(labeled),
            "labeled_size": len(labeled) + len(rows),
            "acquired": len(rows),
            "pool_remaining": remaining - len(rows),
            "seconds_train": trained.seconds,
            "seconds_evaluate": evaluation["seconds"],
            "seconds_score": scored.seconds,
            "seconds_select": selected.seconds,
            "seconds_label": seconds_label,
            "seconds_dvc": commit.seconds_dvc,
            "seconds_git": commit.seconds_git,
            "seconds_compute": seconds_compute,
        }
        if trained.epochs is not None:
            metrics["epochs"] = trained.epochs
        tags = {
            "git.commit": commit.commit,
            "git.tag": commit.tag,
            "dvc.labeled_set_md5": commit.labeled_set_md5,
            "prefect.flow_run_id": self.flow_run_id,
            "baldflow.strategy": a.strategy,
        }
        model = trained.model
        timing = track_round(
            quote(self.tracker),
            run_id,
            round_index,
            metrics,
            tags,
            quote(acquired),
            quote(model.state_dict()),
            getattr(model, "spec", None),
            started=started,
            seconds_compute=seconds_compute,
            seconds_label=seconds_label,
        )
        self.logger.info(
            "round %d: trained on %d labels, test accuracy %.3f; acquired %d by %s "
            "(compute %.2f s, bookkeeping %.2f s) -> %s",
            round_index,
            len(labeled),
            evaluation["test_accuracy"],
            len(rows),
            a.strategy,
            seconds_compute,
            timing["seconds_bookkeeping"],
            commit.tag,
        )
        record = {"round": round_index, **timing, "seconds_compute": seconds_compute}
        self.timings.append(record)
        return record


def _run_name() -> str:
    params = flow_run.parameters
    given = params.get("campaign")
    if given:
        return str(given)
    return str(((params.get("params") or {}).get("campaign") or {}).get("name") or "campaign")


@flow(name="baldflow-campaign", flow_run_name=_run_name, validate_parameters=False)
def campaign_flow(
    workspace: str, params: Mapping[str, Any], campaign: str | None = None
) -> dict[str, Any]:
    """Run (or resume) the campaign described by params in the workspace directory.

    `campaign` only names the flow run in the UI (default: the name in params).
    """
    config = validate(dict(params))
    logger = get_run_logger()
    ws = Workspace(workspace)
    if not Workspace.is_workspace(ws.root):
        from baldflow.config import dump_yaml

        ws = Workspace.init(ws.root, params_text=dump_yaml(config))
    with workspace_lock(ws.root), ws, steps.torch_threads(config.training.num_threads):
        name = config.campaign.name
        recovery = recover_workspace(quote(ws), name)
        if recovery.discarded or recovery.retagged:
            logger.warning(
                "campaign %s: repaired an interrupted round (discarded leftovers: %s, "
                "re-tagged: %s); resuming after round %s",
                name,
                recovery.discarded,
                recovery.retagged,
                recovery.last_round,
            )
        ws.check_campaign_params(name, config.identity())
        state = _Campaign(config, ws, make_tracker(config, ws), logger)
        try:
            crashed = close_stale_flow_runs("baldflow-campaign", workspace, state.flow_run_id)
        except Exception as exc:  # noqa: BLE001
            # Tidying the server's view of old runs must never stop a campaign.
            logger.warning("could not check for flow runs left by a killed process: %s", exc)
            crashed = 0
        if crashed:
            logger.warning("marked %d flow run(s) of a killed process as Crashed", crashed)
        state.parent_run_id, orphans = start_campaign_tracking(
            quote(state.tracker), name, config.to_dict(), quote(_committed_runs(ws, name))
        )
        if orphans:
            logger.warning("closed %d MLflow run(s) that a killed run left open", len(orphans))
        state.data = prepare_data(config)
        splits = state.data.splits
        state.oracle = build_oracle(
            config.oracle.kind, pool_ids=splits.pool_ids, pool_labels=splits.pool_y.tolist()
        )
        last = recovery.last_round
        stopped = "rounds"
        try:
            if last is None:
                state.initial_round()
                last = 0
            else:
                state.check_consistency()
                logger.info("campaign %s: resuming after round %d", name, last)
            for round_index in range(last + 1, config.campaign.rounds + 1):
                if state.run_round(round_index) is None:
                    stopped = "pool-empty"
                    break
        except BaseException:
            _quietly(state.tracker.end, state.parent_run_id, "FAILED")
            raise
        if stopped == "rounds" and last >= config.campaign.rounds:
            logger.info(
                "campaign %s already has %d round(s) of the %d asked for; nothing to do",
                name,
                last,
                config.campaign.rounds,
            )
        curve = ws.rounds_summary(name)
        finish_campaign(quote(state.tracker), state.parent_run_id, name, quote(curve))
        return {
            "campaign": name,
            "workspace": str(ws.root),
            "stopped": stopped,
            "last_round": ws.last_round(name),
            "rounds": curve,
            "timings": state.timings,
            "tracking_uri": state.tracker.tracking_uri,
            "parent_run_id": state.parent_run_id,
            "flow_run_id": state.flow_run_id,
        }
