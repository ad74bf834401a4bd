"""The campaign flow: run or resume the rounds of one active-learning campaign in a workspace.

A round: start its MLflow run -> train -> evaluate -> score the pool -> select a batch ->
label it -> version it (git commit + tag: the round is complete) -> publish -> track -> clear
the hand-off. With the `file` and `label-studio` oracles a round stops after selecting its
batch (model kept, run parked, batch handed to people) and finishes once their labels are in.
Only sequencing lives here: what a round records is baldflow.rounds, every side effect is a
task in baldflow.tasks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from baldflow import seeds, tasks
from baldflow.compute import device
from baldflow.config import Config, validate
from baldflow.flows.outcome import campaign_result, campaign_run_name, final_state
from baldflow.flows.scoring import score_round_pool
from baldflow.flows.slots import slot_holder, workspace_slot
from baldflow.labeling import HandOff, WaitingForLabels
from baldflow.rounds import (
    CampaignRun,
    RoundRecord,
    acquired_table,
    committed_tracking,
    pending_batch,
    recorded_campaign_run,
    training_set_input,
)
from baldflow.workspace import Workspace, WorkspaceLockedError, workspace_lock
from baldflow.workspace.remote import remote_url
from baldflow.workspace.tracking import tracker_for


def _close_run(c: CampaignRun, run_id: str, exc: BaseException) -> None:
    """Best effort on an error path: a stopped round's run must not look live or finished."""
    status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
    try:
        tasks.end_run(quote(c.tracker), run_id, status)
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
        tasks.retire_campaign_run(quote(c.tracker), c.parent_run_id, why)
    except Exception as error:  # noqa: BLE001 (never hide the original error)
        c.logger.warning("could not retire MLflow run %s: %s", c.parent_run_id, error)


def _hand_off(c: CampaignRun, record: RoundRecord, trained: Any = None) -> None:
    """Give the batch to people and stop the campaign until they answer."""
    predictions = None
    if c.label_studio and trained is not None:
        predictions = predictions.batch_predictions(
            c.config, c.data, trained.model, record.sample_ids, record.seed
        )
    labeled_md5 = c.workspace.labeled_md5(c.name)
    pending = pending_batch(record, c.config, c.data, labeled_md5, predictions)
    images = c.data.images(pending)
    sheet = tasks.hand_off_batch(quote(c.handoff), quote(pending), quote(images), record.round)
    studio = _send_to_studio(c, pending, images) if c.label_studio else None
    raise WaitingForLabels(pending, sheet, 0, studio=studio)


def _send_to_studio(c: CampaignRun, pending: Any, images: Any) -> str:
    """The batch as tasks of the campaign's Label Studio project (a no-op once it was sent,
    so a run killed during the send finishes it); returns the project's address."""
    sent, address = tasks.send_to_label_studio(
        c.config, str(c.workspace.root), c.workspace.workspace_id, quote(c.handoff),
        quote(pending), quote(images), pending.round,
    )  # fmt: skip
    if sent.imported:
        c.logger.info(
            "round %d: %d task(s) imported into Label Studio project %d (%s)",
            pending.round, sent.imported, sent.project_id, address,
        )  # fmt: skip
    return address


def _people_labels(c: CampaignRun, pending: Any, round_index: int) -> None:
    """Check the batch people were given; raise WaitingForLabels until all its labels are in.
    With Label Studio, first finish an interrupted send and pull what people annotated."""
    labeled_md5 = c.workspace.labeled_md5(c.name)
    studio = None
    if c.label_studio:
        pending = c.handoff.check_batch(pending, round_index, labeled_md5)
        studio = _send_to_studio(c, pending, c.data.images(pending))
        pulled = tasks.pull_from_label_studio(
            c.config, str(c.workspace.root), quote(c.handoff), quote(pending), round_index
        )
        for decision in pulled.decisions:
            c.logger.warning("round %d: %s", round_index, decision)
    c.handoff.check_pending(pending, round_index, labeled_md5, studio=studio)


def _claimed(c: CampaignRun, commit: Any, run_id: str | None) -> bool:
    """Push a committed round to the shared remote; False when another clone's push of the
    same round came first, in which case this clone's round is dropped for the winner's."""
    if not c.shared:
        return True
    r = commit.round
    lost = tasks.claim_round(quote(c.workspace), quote(commit), r)
    if lost is None:
        return True
    c.logger.warning("%s", lost)
    notes = tasks.discard_lost_round(
        quote(c.workspace), quote(c.tracker), quote(commit), run_id, lost, r
    )
    for note in notes:
        c.logger.warning("%s", note)
    tasks.clear_handoff(quote(c.handoff), r)
    _adopt_recorded_parent(c)
    return False


def _adopt_recorded_parent(c: CampaignRun) -> None:
    """Once another clone's round 0 is the campaign's, its parent run is the parent of all."""
    recorded = recorded_campaign_run(c.workspace, c.name)
    if recorded and recorded != c.parent_run_id:
        c.parent_run_id = tasks.adopt_campaign_run(quote(c.tracker), c.parent_run_id, recorded)


def _sync(c: CampaignRun, last: int | None) -> int | None:
    """The campaign's last committed round once this clone is level with the shared remote."""
    if not c.shared:
        return last
    for note in tasks.sync_workspace(quote(c.workspace)):
        c.logger.info("%s", note)
    now = c.workspace.last_round(c.name)
    _adopt_recorded_parent(c)
    if now != last and now is not None:
        c.workspace.check_consistency(c.name)
        c.logger.info("campaign %s: round %d is the last one committed on the remote", c.name, now)
    return now


def _staged(path: str | None) -> str | None:
    """The round's staged score table, if it is still there (a batch people labeled on
    another clone, or after the scratch space was cleared, completes without one)."""
    return path if path is not None and Path(path).is_file() else None


def _initial_round(c: CampaignRun) -> bool:
    seed = seeds.round_seed(c.config.campaign.seed, 0)
    record = RoundRecord.initial(c.name, seed, c.data.initial_ids, c.parent_run_id)
    if c.people_label:
        pending = c.handoff.pending()
        if pending is None:
            _hand_off(c, record)
        _people_labels(c, pending, 0)
    labels = tasks.label_batch(quote(c.oracle), record.sample_ids, 0)
    commit = tasks.version_round(
        quote(c.workspace), quote(record), quote(labels), c.config.record(), c.flow_run_id, 0,
        pool_manifest=c.data.pool_manifest,
    )  # fmt: skip
    if not _claimed(c, commit, None):
        return False
    tasks.clear_handoff(quote(c.handoff), 0)
    c.logger.info(
        "round 0: initial labeled set of %d samples committed as %s", len(labels.labels), commit.tag
    )
    return True


def _choose_batch(c: CampaignRun, round_index: int, labeled: list) -> tuple[RoundRecord, Any]:
    """Train on the labeled set, evaluate, score the pool and select the round's batch."""
    config = c.config
    seed = seeds.round_seed(config.campaign.seed, round_index)
    training_set = training_set_input(c.workspace, c.name, round_index)
    params = {"round": round_index, "seed": seed, "train_size": len(labeled), **config.identity()}
    run_id = tasks.start_round_run(
        quote(c.tracker), c.parent_run_id, c.name, round_index, params, training_set
    )
    try:
        data = quote(c.data)
        trained = tasks.train_model(
            config, data, quote([(s, y) for s, y, _ in labeled]), seed, round_index
        )
        evaluation = tasks.evaluate_model(config, data, quote(trained), seed, round_index)
        labeled_ids = {sid for sid, _, _ in labeled}
        if c.sharded:
            scored = score_round_pool(c, trained, labeled_ids, seed, round_index)
        else:
            scored = tasks.score_pool(
                config, data, quote(trained), quote(labeled_ids), seed, round_index
            )
        selected = tasks.select_batch(config, quote(scored), seed, round_index)
        evidence = tasks.assess_batch(
            config, data, quote(trained), quote(labeled_ids), quote(selected), seed, round_index,
            scored=quote(scored),
        )  # fmt: skip
        score_table = tasks.keep_pool_scores(
            config, quote(scored), str(c.workspace.root), c.name, seed, round_index
        )
    except BaseException as exc:
        _close_run(c, run_id, exc)
        raise
    if selected.note:
        c.logger.warning("round %d: %s", round_index, selected.note)
    record = RoundRecord.from_steps(
        c.name, round_index, config.acquisition.strategy, seed, run_id, len(labeled),
        c.data.pool_size - len(labeled), trained, evaluation, scored, selected, evidence,
    )  # fmt: skip
    record.score_table = score_table
    return record, trained


def _complete(
    c: CampaignRun, record: RoundRecord, model_state: Any, started: float, compute_here: float
) -> dict[str, float]:
    """Label the batch, version it (the round is then complete), publish and track it."""
    r = record.round
    try:
        labels = tasks.label_batch(quote(c.oracle), record.sample_ids, r)
        commit = tasks.version_round(
            quote(c.workspace), quote(record), quote(labels), c.config.record(), c.flow_run_id,
            r, pool_manifest=c.data.pool_manifest, score_table=_staged(record.score_table),
        )  # fmt: skip
        if not _claimed(c, commit, record.run_id):
            return {"round": r, "lost": True}
        acquired = acquired_table([row for row in c.workspace.ledger(c.name) if row.round == r])
        tasks.publish_batch(
            c.name,
            r,
            quote(acquired),
            f"Samples acquired by {record.strategy} in round {r} of {c.name} "
            f"(git tag {commit.tag}, MLflow run {record.run_id})",
        )
        timing = tasks.track_round(
            quote(c.tracker), quote(record), quote(commit), quote(labels), quote(acquired),
            quote(model_state), c.flow_run_id, r, started=started, seconds_compute=compute_here,
        )  # fmt: skip
        tasks.clear_handoff(quote(c.handoff), r)
    except BaseException as exc:
        # Before the commit the round runs again; after it, the next start repairs the run.
        _close_run(c, record.run_id, exc)
        raise
    c.logger.info(
        "round %d: trained on %d labels, test accuracy %.3f; acquired %d by %s "
        "(compute %.2f s, bookkeeping %.2f s) -> %s",
        r, record.train_size, record.test_accuracy, len(labels.labels), record.strategy,
        record.seconds_compute, timing["seconds_bookkeeping"], commit.tag,
    )  # fmt: skip
    result = {"round": r, **timing, "seconds_compute": record.seconds_compute}
    c.timings.append(result)
    return result


def _round(c: CampaignRun, round_index: int) -> dict[str, float] | None:
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
    pending = c.handoff.pending() if c.people_label else None
    if pending is not None:
        # People have labeled a batch chosen earlier: finish its round as if it never stopped.
        _people_labels(c, pending, round_index)
        record = RoundRecord.from_state(
            pending.state, campaign=c.name, strategy=c.config.acquisition.strategy
        )
        tasks.unpark_round_run(quote(c.tracker), record.run_id, round_index)
        model_state = tasks.load_handoff_model(quote(c.handoff), round_index)
        return _complete(c, record, model_state, started, 0.0)
    record, trained = _choose_batch(c, round_index, labeled)
    if c.people_label:
        tasks.save_handoff_model(quote(c.handoff), quote(trained), round_index)
        tasks.park_round_run(quote(c.tracker), quote(record), round_index)
        _hand_off(c, record, trained)
    return _complete(c, record, trained.model.state_dict(), started, record.seconds_compute)


def _start(config: Config, ws: Workspace, logger: Any) -> CampaignRun:
    """Tidy what a killed process left on the servers, open tracking, load data and oracle."""
    name = config.campaign.name
    flow_run_id = str(flow_run.id or "")
    crashed = tasks.close_stale_flow_runs(str(ws.root), flow_run_id)
    if crashed:
        logger.warning("marked %d flow run(s) of a killed process as Crashed", crashed)
    # Data and oracle first: a data source that fails must not leave a parent run RUNNING.
    data = tasks.prepare_data(config)
    handoff = HandOff(ws.campaign_dir(name), name)
    oracle = tasks.make_oracle(config, quote(data), quote(handoff))
    tracker = tracker_for(config.tracking.mlflow_uri, config.tracking.experiment, ws)
    parent_run_id, notes = tasks.start_campaign_tracking(
        quote(tracker), name, config.to_dict(), quote(committed_tracking(ws, name)),
        recorded_campaign_run(ws, name),
    )  # fmt: skip
    for note in notes:
        logger.warning("%s", note)
    return CampaignRun(
        config, ws, tracker, handoff, data, oracle, parent_run_id, flow_run_id, logger,
        shared=remote_url(ws) is not None,
    )  # fmt: skip


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
            c = _start(config, ws, logger)
            last, stopped, waiting = opened.last_round, "rounds", None
            budget = max_new_rounds if max_new_rounds is not None else -1
            try:
                if last is not None:
                    ws.check_consistency(name)
                    logger.info("campaign %s: resuming after round %d", name, last)
                while True:
                    # Per round: on a shared workspace another clone may have committed
                    # rounds meanwhile, and holds the round's slot while it computes one.
                    with workspace_slot(
                        ws.workspace_id, shared=c.shared, wait=max_new_rounds is None,
                        logger=logger, holder=slot_holder(c),
                    ):  # fmt: skip
                        last = _sync(c, last)
                        if last is not None and last >= config.campaign.rounds:
                            break
                        if budget == 0:
                            stopped = "round-limit"
                            break
                        if last is None:
                            won = _initial_round(c)
                        else:
                            outcome = _round(c, last + 1)
                            if outcome is None:
                                stopped = "pool-empty"
                                break
                            won = not outcome.get("lost")
                    if won:
                        last = c.workspace.last_round(name)
                        budget -= 1
            except WaitingForLabels as exc:
                waiting, stopped = exc, "waiting-for-labels"
                logger.info("%s", exc)
            except BaseException as exc:
                _close_parent(c, exc)
                raise
            if stopped == "rounds" and last is not None and last == opened.last_round:
                logger.info(
                    "campaign %s already has %d round(s) of the %d asked for; nothing to do",
                    name, last, config.campaign.rounds,
                )  # fmt: skip
            curve = ws.rounds_summary(name)
            tasks.finish_campaign(quote(c.tracker), c.parent_run_id, name, quote(curve))
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
