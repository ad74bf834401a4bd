"""Audit queries over a workspace: one sample's story, one round's batch, what two rounds differ by.

Answers come from the ledger, git tags, DVC (labeled sets read at tags) and MLflow, so each
command can be checked against the others.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from baldflow.common import from_spreadsheet, short_repr
from baldflow.labeling import HandOff
from baldflow.workspace import Workspace, round_tag
from baldflow.workspace.scores import round_tables, sample_scores
from baldflow.workspace.tracking import read_only_store, sqlite_store_path

if TYPE_CHECKING:
    from baldflow.data.pool import CampaignPool


class AuditError(LookupError):
    """The campaign, round or sample asked about is not in the workspace."""


def open_workspace(root: str | Path) -> Workspace:
    root = Path(root).resolve()
    if not Workspace.is_workspace(root):
        raise AuditError(f"{root} is not a baldflow workspace (run `baldflow init`)")
    return Workspace(root)


def pick_campaign(ws: Workspace, campaign: str | None) -> str:
    """The campaign asked for, or the only one in the workspace."""
    names = ws.campaigns()
    if campaign is not None:
        if campaign not in names:
            known = ", ".join(names) or "none yet"
            raise AuditError(f"campaign {campaign!r} is not in {ws.root} (campaigns: {known})")
        return campaign
    if len(names) == 1:
        return names[0]
    if not names:
        raise AuditError(f"{ws.root} has no campaign with a completed round yet")
    raise AuditError(f"{ws.root} holds several campaigns ({', '.join(names)}): pass --campaign")


def _tag_commit(ws: Workspace, tag: str) -> tuple[str, str]:
    out = ws.git("log", "-1", "--format=%H%x00%cI", tag + "^{commit}", check=False).strip()
    sha, _, date = out.partition("\x00")
    return sha, date


def _round_summary(ws: Workspace, campaign: str, round_index: int) -> dict[str, str]:
    for row in ws.rounds_summary(campaign):
        if int(row["round"]) == round_index:
            return row
    return {}


def tracking_uri(ws: Workspace) -> str:
    """The MLflow store of the workspace: its params.yaml's tracking.mlflow_uri, else local."""
    from baldflow.workspace.tracking import local_tracking_uri

    if ws.params_path.exists():
        params = yaml.safe_load(ws.params_path.read_text()) or {}
        uri = (params.get("tracking") or {}).get("mlflow_uri")
        if uri:
            return str(uri)
    return local_tracking_uri(ws.mlflow_dir)


def mlflow_run(ws: Workspace, run_id: str) -> dict[str, Any]:
    """Status, metrics and tags of an MLflow run, or why they could not be read."""
    if not run_id:
        return {"run_id": "", "error": "no MLflow run recorded"}
    return read_mlflow_run(tracking_uri(ws), run_id)


def read_mlflow_run(uri: str, run_id: str) -> dict[str, Any]:
    """A run's name, status, experiment, metrics and tags in `uri`, or why they could not be read.

    A local SQLite store is read directly, read-only: importing MLflow and opening its store
    takes 2-5 s, which made `show` slow. Any store this reader does not understand (a
    tracking server, a schema it does not know) goes through MLflow's client.
    """
    path = sqlite_store_path(uri)
    if path is not None:
        if not path.exists():
            return {"run_id": run_id, "error": f"no MLflow store at {uri}"}
        import sqlite3

        try:
            return _read_sqlite_run(path, uri, run_id)
        except sqlite3.Error:
            pass
    return _read_client_run(uri, run_id)


def _read_client_run(uri: str, run_id: str) -> dict[str, Any]:
    """The run through MLflow's client: any store, at the price of importing MLflow."""
    try:
        from mlflow.tracking import MlflowClient

        run = MlflowClient(tracking_uri=uri).get_run(run_id)
    except Exception as exc:  # noqa: BLE001 (an audit answer without MLflow is still an answer)
        return {"run_id": run_id, "error": f"{type(exc).__name__}: {exc}"}
    return {
        "run_id": run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "experiment_id": str(run.info.experiment_id),
        "artifact_uri": run.info.artifact_uri,
        "metrics": dict(run.data.metrics),
        "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        "tracking_uri": uri,
    }


def _read_sqlite_run(path: Path, uri: str, run_id: str) -> dict[str, Any]:
    """What MlflowClient.get_run gives, from MLflow's own tables (runs, latest_metrics, tags)."""
    with read_only_store(path) as connection:
        found = connection.execute(
            "SELECT name, status, experiment_id, artifact_uri FROM runs WHERE run_uuid = ?",
            (run_id,),
        ).fetchone()
        if found is None:
            return {"run_id": run_id, "error": f"no run {run_id} in the MLflow store {uri}"}
        metrics = {
            key: float("nan") if is_nan else float(value)
            for key, value, is_nan in connection.execute(
                "SELECT key, value, is_nan FROM latest_metrics WHERE run_uuid = ?", (run_id,)
            )
        }
        tags = dict(connection.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)))
    name, status, experiment_id, artifact_uri = found
    return {
        "run_id": run_id,
        "run_name": name,
        "status": status,
        "experiment_id": str(experiment_id),
        "artifact_uri": artifact_uri,
        "metrics": metrics,
        "tags": {k: v for k, v in tags.items() if not k.startswith("mlflow.")},
        "tracking_uri": uri,
    }


# ---------------------------------------------------------------------------- one sample
def sample_story(root: str | Path, sample_id: str, campaign: str | None = None) -> dict[str, Any]:
    """Everything the workspace knows about one sample, in every campaign that touched it.

    `scores` lists its score, key and rank in every round whose score table holds it, so a
    sample that was scored but never picked still has a story (why it was passed over).
    """
    ws = open_workspace(root)
    names = [pick_campaign(ws, campaign)] if campaign else ws.campaigns()
    acquisitions = []
    pending = []
    scores = []
    # Campaigns whose pool holds the sample although none of their rounds acquired it.
    never_acquired = []
    for name in names:
        ledger = ws.ledger(name)
        picked = {row.round for row in ledger if row.sample_id == sample_id}
        # Every round's pool scores (rounds written before score tables existed have none):
        # what the sample scored each round, including the rounds that passed it over.
        found = sample_scores(ws.campaign_dir(name), sample_id)
        for entry in found:
            scores.append({"campaign": name, **entry, "picked": entry["round"] in picked})
        for row in ledger:
            if row.sample_id != sample_id:
                continue
            tag = round_tag(name, row.round)
            sha, date = _tag_commit(ws, tag)
            batch = [r for r in ledger if r.round == row.round]
            record = dataclasses.asdict(row)
            record.update(
                {
                    "batch_size": len(batch),
                    # The ledger's rank counts from 0; people count the first pick as 1.
                    "position_in_batch": f"{row.rank + 1} of {len(batch)}"
                    if row.rank is not None
                    else None,
                    "git_tag": tag,
                    "git_commit": sha,
                    "committed_at": date,
                    # Round 0's "model" is the campaign's parent run: no model chose it.
                    "chosen_by": "initial labeled set (balanced per class)"
                    if row.round == 0
                    else f"the round-{row.round} model (MLflow run {row.mlflow_run_id})",
                    "labeled_set_version": f"{row.labeled_set_md5} (data/{name}/labeled.csv "
                    f"at {tag})",
                }
            )
            acquisitions.append(record)
        waiting = HandOff(ws.campaign_dir(name), name).pending()
        out_for_labels = waiting is not None and sample_id in waiting.sample_ids
        if out_for_labels:
            pending.append(
                {
                    "campaign": name,
                    "round": waiting.round,
                    "handed_off_at": waiting.created_at,
                    "labeled": sample_id
                    in HandOff(ws.campaign_dir(name), name).imported(waiting.round),
                }
            )
        if not picked and not out_for_labels and (found or _in_pool(ws, name, sample_id)):
            never_acquired.append(name)
    if not acquisitions and not pending and not never_acquired:
        # Copied from a sheet baldflow wrote, a formula-like id carries the neutralising
        # apostrophe; ids themselves never start with one.
        if from_spreadsheet(sample_id) != sample_id:
            return sample_story(root, from_spreadsheet(sample_id), campaign)
        where = ", ".join(names) or "no campaign"
        raise AuditError(
            f"sample_id {short_repr(sample_id)} is not in the pool ({where} in {ws.root})"
        )
    return {
        "sample_id": sample_id,
        "acquisitions": acquisitions,
        "pending": pending,
        "scores": scores,
        "never_acquired": never_acquired,
    }


def _in_pool(ws: Workspace, campaign: str, sample_id: str) -> bool:
    """Whether the campaign's pool holds the sample, for a sample no round acquired.

    Every round's score table lists the whole unlabeled pool, so where tables exist a sample
    in none of them is not in the pool. Without tables (round 0 only, or rounds written
    before tables existed) the pool is rebuilt from the campaign's recorded parameters:
    seconds, but only for this rare question.
    """
    if round_tables(ws.campaign_dir(campaign)):
        return False
    params_file = ws.campaign_dir(campaign) / "campaign.yaml"
    if not params_file.exists():
        return False
    try:
        ids = rebuilt_pool(params_file).pool_ids
    except Exception as exc:  # noqa: BLE001 (any failure to rebuild means "cannot tell")
        raise AuditError(
            f"sample_id {short_repr(sample_id)} was not acquired by {campaign}, and its pool "
            f"cannot be rebuilt to tell whether it holds the sample: {type(exc).__name__}: {exc}"
        ) from exc
    return sample_id in set(ids)


def rebuilt_pool(params_file: Path) -> CampaignPool:
    """A campaign's pool rebuilt from its recorded parameters (its campaign.yaml) by the data
    layer's opener: the same pool, initial ids and class names its rounds used."""
    # pydantic and torch load here, not with the module: the history and the round queries
    # never rebuild a pool, and `baldflow history` should start quickly.
    from baldflow.config import validate
    from baldflow.data.campaign import campaign_pool_of

    config = validate(yaml.safe_load(params_file.read_text()), check_names=False)
    return campaign_pool_of(config.data, config.campaign)


# ---------------------------------------------------------------------------- one round
def show_round(
    root: str | Path, round_index: int, campaign: str | None = None, *, with_mlflow: bool = True
) -> dict[str, Any]:
    """A round's batch with scores and probabilities, its class histogram, tag and MLflow run."""
    ws = open_workspace(root)
    name = pick_campaign(ws, campaign)
    done = ws.completed_rounds(name)
    if round_index not in done:
        raise AuditError(
            f"round {round_index} of campaign {name!r} is not completed "
            f"(completed: {', '.join(map(str, done)) or 'none'})"
        )
    tag = round_tag(name, round_index)
    sha, date = _tag_commit(ws, tag)
    batch = [r for r in ws.ledger(name) if r.round == round_index]
    histogram = collections.Counter(r.label for r in batch)
    summary = _round_summary(ws, name, round_index)
    run_id = batch[0].mlflow_run_id if batch else summary.get("mlflow_run_id", "")
    return {
        "campaign": name,
        "round": round_index,
        "git_tag": tag,
        "git_commit": sha,
        "committed_at": date,
        "strategy": batch[0].strategy if batch else "",
        "labeled_set_md5": batch[0].labeled_set_md5 if batch else "",
        "labeled_size": int(summary["labeled"]) if summary.get("labeled") else None,
        "test_accuracy": float(summary["test_accuracy"]) if summary.get("test_accuracy") else None,
        "class_histogram": {str(k): histogram[k] for k in sorted(histogram)},
        "batch": [dataclasses.asdict(r) for r in batch],
        "mlflow": mlflow_run(ws, run_id) if with_mlflow else {"run_id": run_id},
    }


# ---------------------------------------------------------------------------- two rounds
def diff_rounds(
    root: str | Path, from_round: int, to_round: int, campaign: str | None = None
) -> dict[str, Any]:
    """What the labeled set gained (or lost) between two rounds, read through DVC at the tags."""
    ws = open_workspace(root)
    name = pick_campaign(ws, campaign)
    done = ws.completed_rounds(name)
    if from_round > to_round:
        # Labels are only ever added, so a reversed range would list every acquisition in
        # between as "removed", which reads like tampering.
        raise AuditError(
            f"--from {from_round} is after --to {to_round}: diff lists what the labeled set "
            f"gained from an earlier round to a later one (try --from {to_round} "
            f"--to {from_round})"
        )
    for which, value in (("--from", from_round), ("--to", to_round)):
        if value not in done:
            raise AuditError(
                f"{which} {value}: round {value} of campaign {name!r} is not completed "
                f"(completed: {', '.join(map(str, done)) or 'none'})"
            )
    before = {sid: (label, r) for sid, label, r in ws.labeled_at(name, from_round)}
    after = {sid: (label, r) for sid, label, r in ws.labeled_at(name, to_round)}
    added = [
        {"sample_id": sid, "label": label, "round": r}
        for sid, (label, r) in after.items()
        if sid not in before
    ]
    removed = [
        {"sample_id": sid, "label": label, "round": r}
        for sid, (label, r) in before.items()
        if sid not in after
    ]
    relabeled = [
        {"sample_id": sid, "label_from": before[sid][0], "label_to": after[sid][0]}
        for sid in before.keys() & after.keys()
        if before[sid][0] != after[sid][0]
    ]
    return {
        "campaign": name,
        "from": {"round": from_round, "tag": round_tag(name, from_round), "size": len(before)},
        "to": {"round": to_round, "tag": round_tag(name, to_round), "size": len(after)},
        "added": sorted(added, key=lambda r: (r["round"], natural_key(r["sample_id"]))),
        "removed": sorted(removed, key=lambda r: (r["round"], natural_key(r["sample_id"]))),
        "relabeled": sorted(relabeled, key=lambda r: natural_key(r["sample_id"])),
    }


def natural_key(sample_id: str) -> tuple:
    """Orders ids as people read them: digit runs by value, so 233 comes before 1322 and
    img9 before img10; text runs as text. Tagged so a number never meets a string."""
    return tuple(
        (0, int(part), part) if part.isdecimal() else (1, 0, part)
        for part in re.split(r"(\d+)", sample_id)
        if part
    )
