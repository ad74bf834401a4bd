"""The campaign flow: run or resume the rounds of one active-learning campaign in a workspace.

Each round is a group of tasks (train, evaluate, score, select, label, version, track) whose
git commit marks it complete, so a killed run resumes at the last completed round. With the
`file` oracle a round stops after selecting its batch and finishes once people's labels are in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Mapping
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed
from prefect.utilities.annotations import quote

from baldflow import steps
from baldflow.common import utc_now
from baldflow.config import Config, validate
from baldflow.labeling import HandOff, PendingRound, build_oracle, describe_item
from baldflow.tasks import (
    close_stale_flow_runs,
    evaluate_model,
    finish_campaign,
    hand_off_batch,
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
from baldflow.workspace import LedgerRow, Workspace, WorkspaceError, round_tag, workspace_lock
from baldflow.workspace.ledger import labeled_rows_from_ledger, labeled_text, md5_of_text
from baldflow.workspace.tracking import Tracker, local_tracking_uri


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


class WaitingForLabels(Exception):  # noqa: N818 (a pause, not an error)
    """The round's batch is with people (oracle `file`); the campaign stops until they answer."""

    def __init__(self, pending: PendingRound, sheet: str, labeled: int):
        self.pending = pending
        self.sheet = sheet
        super().__init__(
            f"round {pending.round} of {pending.campaign} is waiting for labels: "
            f"{labeled} of {len(pending.sample_ids)} labeled; fill in {sheet} and run "
            "`baldflow label import`"
        )


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
        self.handoff = (
            HandOff(workspace.campaign_dir(self.name), self.name)
            if config.oracle.kind == "file"
            else None
        )

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
        if self.handoff is not None:
            pending = self.handoff.pending()
            if pending is None:
                self._hand_off(0, ids, {})
            self._check_pending(pending, 0)
        labels = label_batch(quote(self.oracle), ids, 0)
        labeled_by = self._labeled_by(ids)
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
                labeled_by=by,
            )
            for rank, (sid, label, by) in enumerate(zip(ids, labels, labeled_by, strict=True))
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
        if self.handoff is not None:
            self.handoff.clear(0)
        self.logger.info(
            "round 0: initial labeled set of %d samples committed as %s", len(rows), commit.tag
        )

    # ------------------------------------------------------------- the file hand-off
    def _labeled_by(self, ids: list[str]) -> list[str]:
        describe = getattr(self.oracle, "labeled_by", None)
        return list(describe(ids)) if describe is not None else [""] * len(ids)

    def _hand_off(self, round_index: int, ids: list[str], state: dict[str, Any]) -> None:
        """Write the batch for people to label and stop the campaign (raises WaitingForLabels)."""
        from baldflow.audit.thumbnails import is_image_batch

        assert self.data is not None and self.handoff is not None
        c = self.config
        pending = PendingRound(
            campaign=self.name,
            round=round_index,
            sample_ids=list(ids),
            items=[describe_item(c.data.source, c.data.root, sid) for sid in ids],
            class_names=[str(n) for n in self.data.splits.class_names],
            base_md5=md5_of_text(labeled_text(self.labeled())),
            created_at=utc_now(),
            state=state,
            params=c.to_dict(),
        )
        images = self.data.splits.pool_x[self.data.rows(ids)] if ids else None
        if not is_image_batch(images):
            images = None
        sheet = hand_off_batch(quote(self.handoff), quote(pending), quote(images), round_index)
        raise WaitingForLabels(pending, sheet, 0)

    def _check_pending(self, pending: PendingRound | None, round_index: int) -> PendingRound:
        """A pending batch may finish only the round it was chosen for, once fully labeled."""
        assert self.handoff is not None
        if pending is None:
            raise WorkspaceError(
                f"campaign {self.name!r}: no pending batch for round {round_index}"
            )
        current = md5_of_text(labeled_text(self.labeled()))
        if pending.round != round_index or pending.base_md5 != current:
            raise WorkspaceError(
                f"campaign {self.name!r}: the batch in {self.handoff.pending_path(pending.round)} "
                f"was chosen for round {pending.round} from another labeled set than the "
                f"workspace's (next round {round_index}); remove it to choose a new batch"
            )
        if not self.handoff.is_complete(pending):
            labeled = len(set(self.handoff.imported(pending.round)) & set(pending.sample_ids))
            raise WaitingForLabels(pending, str(self.handoff.sheet_path(pending.round)), labeled)
        return pending

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
        if self.handoff is not None:
            pending = self.handoff.pending()
            if pending is not None:
                self._check_pending(pending, round_index)
                return self._finish_pending(pending)
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
        except WaitingForLabels:
            # The run is parked (SCHEDULED) until the labels come back.
            raise
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
        model = trained.model
        work = {
            "round": round_index,
            "run_id": run_id,
            "seed": seed,
            "train_size": len(labeled),
            "remaining": remaining,
            "sample_ids": list(selected.sample_ids),
            "scores": selected.scores,
            "probabilities": selected.probabilities,
            "keys": selected.keys,
            "evaluation": dict(evaluation),
            "seconds_train": trained.seconds,
            "seconds_score": scored.seconds,
            "seconds_select": selected.seconds,
            "epochs": trained.epochs,
            "model_spec": getattr(model, "spec", None),
        }
        if self.handoff is not None:
            import torch

            # The model that chose the batch is tracked when the round completes, maybe days
            # later in another process: keep its weights beside the pending batch.
            self.handoff.dir.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), self.handoff.model_path(round_index))
            self.tracker.park(
                run_id,
                {
                    "test_accuracy": evaluation["test_accuracy"],
                    "test_nll": evaluation["test_nll"],
                },
                round_index,
            )
            self._hand_off(round_index, selected.sample_ids, work)
        seconds_compute = (
            trained.seconds + evaluation["seconds"] + scored.seconds + selected.seconds
        )
        return self._complete(work, model.state_dict(), started, seconds_compute)

    def _finish_pending(self, pending: PendingRound) -> dict[str, Any]:
        """Complete a round whose batch people have labeled, as if it had never stopped."""
        import torch

        assert self.handoff is not None
        started = time.perf_counter()
        work = pending.state
        self.tracker.unpark(work["run_id"])
        state = torch.load(self.handoff.model_path(pending.round), weights_only=True)
        try:
            # The compute happened in the run that handed the batch off.
            return self._complete(work, state, started, 0.0)
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            _quietly(self.tracker.end, work["run_id"], status)
            raise

    def _complete(
        self,
        work: dict[str, Any],
        model_state: Mapping[str, Any],
        started: float,
        seconds_compute_here: float,
    ) -> dict[str, Any]:
        """Label the selected batch, version it, publish it and track the round."""
        config = self.config
        a = config.acquisition
        round_index = work["round"]
        run_id = work["run_id"]
        seed = work["seed"]
        evaluation = work["evaluation"]
        ids = work["sample_ids"]
        t_label = time.perf_counter()
        labels = label_batch(quote(self.oracle), ids, round_index)
        labeled_by = self._labeled_by(ids)
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
                labeled_by=by,
            )
            for rank, (sid, label, score, prob, key, by) in enumerate(
                zip(
                    ids,
                    labels,
                    work["scores"],
                    work["probabilities"],
                    work["keys"],
                    labeled_by,
                    strict=True,
                )
            )
        ]
        seconds_compute = (
            work["seconds_train"]
            + evaluation["seconds"]
            + work["seconds_score"]
            + work["seconds_select"]
        )
        train_size = work["train_size"]
        remaining = work["remaining"]
        summary = {
            "round": round_index,
            "train_size": train_size,
            "labeled": train_size + len(rows),
            "acquired": len(rows),
            "test_accuracy": evaluation["test_accuracy"],
            "test_nll": evaluation["test_nll"],
            "seconds_compute": seconds_compute,
            "seconds_acquisition": work["seconds_score"] + work["seconds_select"],
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
                "labeled_by": row.labeled_by,
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
            "train_size": train_size,
            "labeled_size": train_size + len(rows),
            "acquired": len(rows),
            "pool_remaining": remaining - len(rows),
            "seconds_train": work["seconds_train"],
            "seconds_evaluate": evaluation["seconds"],
            "seconds_score": work["seconds_score"],
            "seconds_select": work["seconds_select"],
            "seconds_label": seconds_label,
            "seconds_dvc": commit.seconds_dvc,
            "seconds_git": commit.seconds_git,
            "seconds_compute": seconds_compute,
        }
        if work["epochs"] is not None:
            metrics["epochs"] = work["epochs"]
        tags = {
            "git.commit": commit.commit,
            "git.tag": commit.tag,
            "dvc.labeled_set_md5": commit.labeled_set_md5,
            "prefect.flow_run_id": self.flow_run_id,
            "baldflow.strategy": a.strategy,
        }
        timing = track_round(
            quote(self.tracker),
            run_id,
            round_index,
            metrics,
            tags,
            quote(acquired),
            quote(dict(model_state)),
            work["model_spec"],
            started=started,
            seconds_compute=seconds_compute_here,
            seconds_label=seconds_label,
        )
        if self.handoff is not None:
            self.handoff.clear(round_index)
        self.logger.info(
            "round %d: trained on %d labels, test accuracy %.3f; acquired %d by %s "
            "(compute %.2f s, bookkeeping %.2f s) -> %s",
            round_index,
            train_size,
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


def run_campaign(
    workspace: str, params: Mapping[str, Any], *, max_new_rounds: int | None = None
) -> dict[str, Any]:
    """The body of the campaign and cycle flows: run rounds until done, or for a few rounds.

    `max_new_rounds` caps the rounds this call completes (round 0 counts); None runs up to
    campaign.rounds. Must run inside a flow (it calls tasks and reads the flow run's id).
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
            config.oracle.kind,
            pool_ids=splits.pool_ids,
            pool_labels=splits.pool_y.tolist(),
            handoff=state.handoff,
        )
        last = recovery.last_round
        stopped = "rounds"
        waiting: WaitingForLabels | None = None
        budget = max_new_rounds if max_new_rounds is not None else -1
        try:
            if last is None:
                state.initial_round()
                last = 0
                budget -= 1
            else:
                state.check_consistency()
                logger.info("campaign %s: resuming after round %d", name, last)
            for round_index in range(last + 1, config.campaign.rounds + 1):
                if budget == 0:
                    stopped = "round-limit"
                    break
                if state.run_round(round_index) is None:
                    stopped = "pool-empty"
                    break
                budget -= 1
        except WaitingForLabels as exc:
            waiting = exc
            stopped = "waiting-for-labels"
            logger.info("%s", exc)
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
        result = {
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
        if waiting is not None:
            result["waiting_for_labels"] = {
                "round": waiting.pending.round,
                "sheet": waiting.sheet,
                "batch_size": len(waiting.pending.sample_ids),
                "message": str(waiting),
            }
        return result


def final_state(result: dict[str, Any]) -> Any:
    """The flow's return value: a named Completed state while a batch waits for labels.

    The Prefect UI then shows "WaitingForLabels" rather than a plain "Completed".
    """
    waiting = result.get("waiting_for_labels")
    if waiting is None:
        return result
    return Completed(name="WaitingForLabels", message=waiting["message"], data=result)


@flow(name="baldflow-campaign", flow_run_name=_run_name, validate_parameters=False)
def campaign_flow(
    workspace: str, params: Mapping[str, Any], campaign: str | None = None
) -> dict[str, Any]:
    """Run (or resume) the campaign described by params in the workspace directory.

    `campaign` only names the flow run in the UI (default: the name in params).
    """
    return final_state(run_campaign(workspace, params))
