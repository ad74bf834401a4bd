"""The campaign flow: run or resume the rounds of one active-learning campaign in a workspace.

A round: start its MLflow run -> train -> evaluate -> score the pool -> select a batch ->
label it -> version it (git commit + tag: the round is complete) -> publish -> track -> clear
the hand-off. With the `file` and `label-studio` oracles a round stops after selecting its
batch (model kept, run parked, batch handed to people) and finishes once their labels are in.
Only sequencing lives here: the run's modes (baldflow.flows.modes) are chosen once at its
start, what a round records is baldflow.rounds, every computation and side effect is a task in
baldflow.tasks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from baldflow import seeds, tasks
from baldflow.compute import device
from baldflow.config import Config, campaign_identity, campaign_record, validate
from baldflow.flows.modes import Modes, choose_modes
from baldflow.flows.outcome import campaign_result, campaign_run_name, final_state
from baldflow.labeling import HandOff, WaitingForLabels
from baldflow.rounds import (
    CampaignRun,
    RoundRecord,
    acquired_table,
    committed_tracking,
    recorded_campaign_run,
    training_set_input,
)
from baldflow.tasks import Trained
from baldflow.workspace import Workspace, WorkspaceLockedError, workspace_lock
from baldflow.workspace.remote import remote_url
from baldflow.workspace.tracking import tracker_for


class ClosedIfStopped:
    """Around a stretch of a campaign run: if an error or an interrupt stops it, close the
    MLflow run that stretch has open, so that it does not look live or finished. With
    `round_run_id`, the round's run (FAILED, or KILLED on Ctrl-C); without, the campaign's
    parent run (see `_close_parent`). A batch that waits for labels is no failure: it passes.
    The error itself always goes on up.
    """

    def __init__(self, c: CampaignRun, round_run_id: str | None = None):
        self.c = c
        self.round_run_id = round_run_id

    def __enter__(self) -> ClosedIfStopped:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if exc is None or isinstance(exc, WaitingForLabels):
            return False
        if self.round_run_id is not None:
            _close_run(self.c, self.round_run_id, exc)
        else:
            _close_parent(self.c, exc)
        return False


def _close_run(c: CampaignRun, run_id: str, exc: BaseException) -> None:
    """Best effort on an error path: a stopped round's run must not look live or finished."""
    status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
    try:
        tasks.end_run(c.tracker, run_id, status)
    except Exception as error:  # noqa: BLE001 (never hide the original error)
        c.logger.warning("could not mark MLflow run %s %s: %s", run_id, status, error)


def _close_parent(c: CampaignRun, exc: BaseException) -> None:
    """The campaign's parent run after the run stopped on `exc` (best effort).

    A parent no committed round 0 names holds nothing yet (this clone opened it for a round
    0 it never committed): it is retired, so that a failed start never leaves a second
    parent beside the campaign's. The campaign's own parent is closed as FAILED or KILLED,
    except when another clone holds the round's slot: that clone runs under it right now.
    """
    try:
        anchored = recorded_campaign_run(c.workspace, c.name) == c.parent_run_id
    except Exception:  # noqa: BLE001 (an unreadable ledger: keep the run, as before)
        anchored = True
    if anchored:
        if not isinstance(exc, WorkspaceLockedError):
            _close_run(c, c.parent_run_id, exc)
        return
    why = f"the run stopped before round 0 was committed ({type(exc).__name__})"
    try:
        tasks.retire_campaign_run(c.tracker, c.parent_run_id, why)
    except Exception as error:  # noqa: BLE001 (never hide the original error)
        c.logger.warning("could not retire MLflow run %s: %s", c.parent_run_id, error)


def _staged(path: str | None) -> str | None:
    """The round's staged score table, if it is still there (a batch people labeled on
    another clone, or after the scratch space was cleared, completes without one)."""
    return path if path is not None and Path(path).is_file() else None


def _initial_round(c: CampaignRun, modes: Modes) -> bool:
    """Label and commit the initial labeled set; False when another clone's round 0 won."""
    seed = seeds.round_seed(c.config.campaign.seed, 0)
    record = RoundRecord.initial(c.name, seed, c.data.initial_ids, c.parent_run_id)
    modes.labels.initial_batch(c, record)
    labels = tasks.label_batch(c.oracle, record.sample_ids, 0)
    commit = tasks.version_round(
        c.workspace, record, labels, campaign_record(c.config), c.flow_run_id, 0,
        pool_manifest=c.data.manifest,
    )  # fmt: skip
    if not modes.sync.claimed(c, commit, None):
        return False
    tasks.clear_handoff(c.handoff, 0)
    c.logger.info(
        "round 0: initial labeled set of %d samples committed as %s", len(labels.labels), commit.tag
    )
    return True


def _choose_batch(
    c: CampaignRun, modes: Modes, round_index: int, labeled: list
) -> tuple[RoundRecord, Trained]:
    """Train on the labeled set, evaluate, score the pool and select the round's batch."""
    config = c.config
    seed = seeds.round_seed(config.campaign.seed, round_index)
    training_set = training_set_input(c.workspace, c.name, round_index)
    params = {
        "round": round_index, "seed": seed, "train_size": len(labeled),
        **campaign_identity(config),
    }  # fmt: skip
    run_id = tasks.start_round_run(
        c.tracker, c.parent_run_id, c.name, round_index, params, training_set
    )
    with ClosedIfStopped(c, run_id):
        trained = tasks.train_model(
            config, c.data, [(s, y) for s, y, _ in labeled], seed, round_index
        )
        evaluation = tasks.evaluate_model(config, c.data, trained, seed, round_index)
        labeled_ids = {sid for sid, _, _ in labeled}
        scored = modes.scoring.score(c, trained, labeled_ids, seed, round_index)
        selected = tasks.select_batch(config, scored, seed, round_index)
        evidence = tasks.assess_batch(
            config, c.data, trained, labeled_ids, selected, seed, round_index, scored=scored
        )
        score_table = tasks.keep_pool_scores(
            config, scored, str(c.workspace.root), c.name, seed, round_index
        )
        modes.scoring.release(c, round_index)
    if selected.note:
        c.logger.warning("round %d: %s", round_index, selected.note)
    record = RoundRecord.from_steps(
        c.name, round_index, config.acquisition.strategy, seed, run_id, len(labeled),
        c.data.pool_size - len(labeled), trained, evaluation, scored, selected, evidence,
    )  # fmt: skip
    record.score_table = score_table
    return record, trained


def _complete(
    c: CampaignRun,
    modes: Modes,
    record: RoundRecord,
    model_state: Mapping[str, Any],
    started: float,
    compute_here: float,
) -> dict[str, float]:
    """Label the batch, version it (the round is then complete), publish and track it."""
    r = record.round
    # Before the commit the round runs again; after it, the next start repairs the run.
    with ClosedIfStopped(c, record.run_id):
        labels = tasks.label_batch(c.oracle, record.sample_ids, r)
        commit = tasks.version_round(
            c.workspace, record, labels, campaign_record(c.config), c.flow_run_id, r,
            pool_manifest=c.data.manifest, score_table=_staged(record.score_table),
        )  # fmt: skip
        if not modes.sync.claimed(c, commit, record.run_id):
            return {"round": r, "lost": True}
        acquired = acquired_table([row for row in c.workspace.ledger(c.name) if row.round == r])
        tasks.publish_batch(
            c.name,
            r,
            acquired,
            f"Samples acquired by {record.strategy} in round {r} of {c.name} "
            f"(git tag {commit.tag}, MLflow run {record.run_id})",
        )
        timing = tasks.track_round(
            c.tracker, record, commit, labels, acquired, model_state, c.flow_run_id, r,
            started=started, seconds_compute=compute_here,
        )  # fmt: skip
        tasks.clear_handoff(c.handoff, r)
    c.logger.info(
        "round %d: trained on %d labels, test accuracy %.3f; acquired %d by %s "
        "(compute %.2f s, bookkeeping %.2f s) -> %s",
        r, record.train_size, record.test_accuracy, len(labels.labels), record.strategy,
        record.seconds_compute, timing["seconds_bookkeeping"], commit.tag,
    )  # fmt: skip
    result = {"round": r, **timing, "seconds_compute": record.seconds_compute}
    c.timings.append(result)
    return result


def _round(c: CampaignRun, modes: Modes, round_index: int) -> dict[str, float] | None:
    """One acquisition round; None when the pool is empty and the campaign is over."""
    started = time.perf_counter()
    labeled = c.workspace.labeled(c.name)
    if c.data.pool_size - len(labeled) <= 0:
        c.logger.info(
            "the pool is empty after round %d: all %d samples are labeled; campaign ends",
            round_index - 1,
            len(labeled),
        )
        return None
    pending = modes.labels.handed_off(c)
    if pending is not None:
        # People have labeled a batch chosen earlier: finish its round as if it never stopped.
        modes.labels.wait_for_labels(c, pending, round_index)
        record = RoundRecord.from_state(
            pending.state, campaign=c.name, strategy=c.config.acquisition.strategy
        )
        tasks.unpark_round_run(c.tracker, record.run_id, round_index)
        model_state = tasks.load_handoff_model(c.handoff, round_index)
        return _complete(c, modes, record, model_state, started, 0.0)
    record, trained = _choose_batch(c, modes, round_index, labeled)
    modes.labels.after_choosing(c, record, trained)
    return _complete(c, modes, record, trained.model.state_dict(), started, record.seconds_compute)


def _rounds(
    c: CampaignRun, modes: Modes, last: int | None, max_new_rounds: int | None
) -> tuple[int | None, str]:
    """Rounds until the campaign has all it asked for, the round budget is spent or the pool
    is empty: (the last committed round, why the run stopped)."""
    if last is not None:
        c.workspace.check_consistency(c.name)
        c.logger.info("campaign %s: resuming after round %d", c.name, last)
    budget = max_new_rounds if max_new_rounds is not None else -1
    while True:
        # Per round: on a shared workspace another clone may have committed rounds meanwhile,
        # and holds the round's slot while it computes one.
        with modes.sync.round_slot(c, wait=max_new_rounds is None):
            last = modes.sync.level_with_remote(c, last)
            if last is not None and last >= c.config.campaign.rounds:
                return last, "rounds"
            if budget == 0:
                return last, "round-limit"
            if last is None:
                won = _initial_round(c, modes)
            else:
                outcome = _round(c, modes, last + 1)
                if outcome is None:
                    return last, "pool-empty"
                won = not outcome.get("lost")
        if won:
            last = c.workspace.last_round(c.name)
            budget -= 1


def _start(config: Config, ws: Workspace, logger: Any) -> tuple[CampaignRun, Modes]:
    """Tidy what a killed process left on the servers, open tracking, load data and oracle;
    choose the run's modes."""
    name = config.campaign.name
    flow_run_id = str(flow_run.id or "")
    crashed = tasks.close_stale_flow_runs(str(ws.root), flow_run_id)
    if crashed:
        logger.warning("marked %d flow run(s) of a killed process as Crashed", crashed)
    # Data and oracle first: a data source that fails must not leave a parent run RUNNING.
    data = tasks.prepare_data(config)
    modes = choose_modes(config, shared=remote_url(ws) is not None)
    if config.model.freeze == "backbone":
        data = modes.scoring.frozen_features(config, data, str(ws.root))
    logger.info("model %s", tasks.check_model(config, data))
    handoff = HandOff(ws.campaign_dir(name), name)
    oracle = tasks.make_oracle(config, data, handoff)
    tracker = tracker_for(config.tracking.mlflow_uri, config.tracking.experiment, ws)
    parent_run_id, notes = tasks.start_campaign_tracking(
        tracker, name, config.to_dict(), committed_tracking(ws, name),
        recorded_campaign_run(ws, name),
    )  # fmt: skip
    for note in notes:
        logger.warning("%s", note)
    c = CampaignRun(config, ws, tracker, handoff, data, oracle, parent_run_id, flow_run_id, logger)
    return c, modes


def run_campaign(
    workspace: str, params: Mapping[str, Any], *, max_new_rounds: int | None = None
) -> dict[str, Any]:
    """The body of the campaign and cycle flows: run rounds until done, or for a few rounds.

    `max_new_rounds` caps the rounds this call completes (round 0 counts); None runs up to
    campaign.rounds. Must run inside a flow (it calls tasks and reads the flow run's id).
    """
    config = validate(dict(params))
    logger = get_run_logger()
    precision_note = device.mixed_precision_note(config)
    if precision_note is not None:  # once per run, not once per round or batch
        logger.warning("%s", precision_note)
    name = config.campaign.name
    root = Path(workspace).resolve()
    root.mkdir(parents=True, exist_ok=True)
    with workspace_lock(root), device.torch_threads(config.training.num_threads):
        opened = tasks.open_workspace(str(root), config)
        for note in opened.notes:
            logger.warning("%s", note)
        with opened.workspace as ws:
            c, modes = _start(config, ws, logger)
            last, waiting = opened.last_round, None
            try:
                with ClosedIfStopped(c):
                    last, stopped = _rounds(c, modes, last, max_new_rounds)
            except WaitingForLabels as exc:
                waiting, stopped = exc, "waiting-for-labels"
                logger.info("%s", exc)
            if stopped == "rounds" and last is not None and last == opened.last_round:
                logger.info(
                    "campaign %s already has %d round(s) of the %d asked for; nothing to do",
                    name, last, config.campaign.rounds,
                )  # fmt: skip
            curve = ws.rounds_summary(name)
            tasks.finish_campaign(c.tracker, c.parent_run_id, name, curve)
            return campaign_result(
                campaign=name, workspace=ws, stopped=stopped, curve=curve, timings=c.timings,
                tracking_uri=c.tracker.tracking_uri, experiment=c.tracker.experiment,
                parent_run_id=c.parent_run_id,
                flow_run_id=c.flow_run_id, waiting=waiting,
            )  # fmt: skip


@flow(name="baldflow-campaign", flow_run_name=campaign_run_name, validate_parameters=False)
def campaign_flow(
    workspace: str, params: Mapping[str, Any], campaign: str | None = None
) -> dict[str, Any]:
    """Run (or resume) the campaign described by params in the workspace directory.

    `campaign` only names the flow run in the UI (default: the name in params).
    """
    return final_state(run_campaign(workspace, params))
