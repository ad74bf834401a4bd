"""What a round is: its typed record, and everything derived from it that the audit trail keeps
(ledger rows, the rounds.csv summary, MLflow metrics and tags, the acquired table).

The campaign flow fills a RoundRecord from its compute tasks and hands it to the versioning and
tracking tasks; a round waiting for people's labels keeps it (as `to_state()`) beside the batch
and finishes from it later, maybe in another process, as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from baldflow.common import utc_now
from baldflow.config import Config, strategy_spelling
from baldflow.data.pool import CampaignPool
from baldflow.labeling import HandOff, Oracle, PendingRound, describe_item
from baldflow.workspace.ledger import LedgerRow, labeled_text, md5_of_text
from baldflow.workspace.repo import RoundCommit, Workspace, round_tag
from baldflow.workspace.tracking import Tracker

INITIAL_STRATEGY = "initial"
# The evidence's own timings (baldflow.compute.evidence.batch_evidence): counted in seconds_compute.
EVIDENCE_SECONDS = ("seconds_evidence", "seconds_shadow")


@dataclasses.dataclass
class Labels:
    """The oracle's answer for a batch, in batch order."""

    labels: list[int]
    labeled_by: list[str]
    seconds: float = 0.0


@dataclasses.dataclass
class RoundRecord:
    """One round: the batch it acquired, why, and what it cost.

    Field names match the pending-batch state of earlier releases, so a batch handed to people
    before an upgrade still finishes after it.
    """

    campaign: str
    round: int
    strategy: str
    seed: int
    # The round's MLflow run (round 0 is recorded on the campaign's parent run).
    run_id: str
    # Labeled samples the round's model was trained on, and unlabeled ones it scored.
    train_size: int
    remaining: int
    sample_ids: list[str]
    scores: list[float | None]
    probabilities: list[float | None]
    keys: list[float | None]
    test_accuracy: float | None = None
    test_nll: float | None = None
    seconds_train: float = 0.0
    seconds_evaluate: float = 0.0
    seconds_score: float = 0.0
    seconds_select: float = 0.0
    epochs: int | None = None
    model_spec: dict[str, Any] | None = None
    # What the round's trainer reported (training.trainer), logged as trainer.<name>.
    trainer_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    # How good the batch is as a batch (baldflow.acquisition.quality) and, when asked for, what
    # BatchBALD would have picked instead: MLflow metrics of the round, named as they are here.
    evidence: dict[str, float] = dataclasses.field(default_factory=dict)
    # Where the round's full pool scores were staged (copied into the round's commit), if any.
    score_table: str | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def initial(
        cls, campaign: str, seed: int, sample_ids: Sequence[str], run_id: str
    ) -> RoundRecord:
        """Round 0: the initial labeled set, chosen by the data source, not by a model."""
        n = len(sample_ids)
        return cls(
            campaign=campaign,
            round=0,
            strategy=INITIAL_STRATEGY,
            seed=seed,
            run_id=run_id,
            train_size=0,
            remaining=0,
            sample_ids=list(sample_ids),
            scores=[None] * n,
            probabilities=[None] * n,
            keys=[None] * n,
        )

    @classmethod
    def from_steps(
        cls,
        campaign: str,
        round_index: int,
        strategy: str,
        seed: int,
        run_id: str,
        train_size: int,
        remaining: int,
        trained: Any,
        evaluation: Mapping[str, float],
        scored: Any,
        selected: Any,
        evidence: Mapping[str, float] | None = None,
    ) -> RoundRecord:
        """A round from what its compute steps returned (baldflow.compute: Trained, the
        evaluation, PoolScores, Selected, and the batch's evidence)."""
        return cls(
            campaign=campaign,
            round=round_index,
            strategy=strategy,
            seed=seed,
            run_id=run_id,
            train_size=train_size,
            remaining=remaining,
            sample_ids=list(selected.sample_ids),
            scores=list(selected.scores),
            probabilities=list(selected.probabilities),
            keys=list(selected.keys),
            test_accuracy=evaluation["test_accuracy"],
            test_nll=evaluation["test_nll"],
            seconds_train=trained.seconds,
            seconds_evaluate=evaluation["seconds"],
            seconds_score=scored.seconds,
            seconds_select=selected.seconds,
            epochs=trained.epochs,
            model_spec=getattr(trained.model, "spec", None),
            trainer_metrics={
                str(k): float(v)
                for k, v in (getattr(trained, "metrics", None) or {}).items()
                if math.isfinite(float(v))
            },
            # Only finite numbers: a metric that could not be estimated is left out, not NaN.
            evidence={k: float(v) for k, v in (evidence or {}).items() if math.isfinite(v)},
        )

    def to_state(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any], *, campaign: str, strategy: str) -> RoundRecord:
        """Read a record kept beside a pending batch (also the older untyped layout)."""
        data = dict(state)
        evaluation = data.pop("evaluation", None)
        if evaluation is not None:
            data.setdefault("test_accuracy", evaluation.get("test_accuracy"))
            data.setdefault("test_nll", evaluation.get("test_nll"))
            data.setdefault("seconds_evaluate", evaluation.get("seconds", 0.0))
        data.setdefault("campaign", campaign)
        data.setdefault("strategy", strategy)
        # A batch handed out before strategy names settled on hyphens: today's spelling.
        data["strategy"] = strategy_spelling(data["strategy"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"round state has unknown field(s) {', '.join(unknown)}")
        return cls(**data)

    # ------------------------------------------------------------------ derived
    @property
    def is_initial(self) -> bool:
        return self.round == 0

    @property
    def seconds_evidence(self) -> float:
        """Assessing the batch (its joint MI, duplicates; the shadow BatchBALD check when asked
        for): computation on the round's model, so part of compute, not of bookkeeping. A
        record kept before the evidence was measured has none."""
        return sum(self.evidence.get(key, 0.0) for key in EVIDENCE_SECONDS)

    @property
    def seconds_compute(self) -> float:
        """Training, evaluating, scoring, selecting and assessing the batch: everything a round
        computes. The round's wall time less this and labeling is its bookkeeping."""
        return (
            self.seconds_train
            + self.seconds_evaluate
            + self.seconds_score
            + self.seconds_select
            + self.seconds_evidence
        )

    @property
    def seconds_acquisition(self) -> float:
        return self.seconds_score + self.seconds_select

    def ledger_rows(
        self, labels: Labels, *, flow_run_id: str, acquired_at: str | None = None
    ) -> list[LedgerRow]:
        """One row per acquired sample, in pick order (the labeled-set md5 is filled at commit)."""
        if len(labels.labels) != len(self.sample_ids):
            raise ValueError(
                f"round {self.round}: {len(labels.labels)} label(s) for a batch of "
                f"{len(self.sample_ids)}"
            )
        now = acquired_at or utc_now()
        return [
            LedgerRow(
                campaign=self.campaign,
                round=self.round,
                sample_id=sid,
                label=int(label),
                strategy=self.strategy,
                rank=rank,
                score=score,
                first_pick_probability=probability,
                selection_key=key,
                seed=self.seed,
                acquired_at=now,
                mlflow_run_id=self.run_id,
                prefect_flow_run_id=flow_run_id,
                labeled_set_md5="",
                labeled_by=by,
            )
            for rank, (sid, label, score, probability, key, by) in enumerate(
                zip(
                    self.sample_ids,
                    labels.labels,
                    self.scores,
                    self.probabilities,
                    self.keys,
                    labels.labeled_by,
                    strict=True,
                )
            )
        ]

    def summary(self) -> dict[str, Any]:
        """The round's row of rounds.csv (the labeled-set md5 is added at commit)."""
        acquired = len(self.sample_ids)
        row: dict[str, Any] = {
            "round": self.round,
            "train_size": self.train_size,
            "labeled": self.train_size + acquired,
            "acquired": acquired,
        }
        if not self.is_initial:
            row.update(
                test_accuracy=self.test_accuracy,
                test_nll=self.test_nll,
                seconds_compute=self.seconds_compute,
                seconds_acquisition=self.seconds_acquisition,
                mlflow_run_id=self.run_id,
            )
        return row

    def trailers(self, flow_run_id: str) -> dict[str, str]:
        """Extra lines of the round's git commit message linking it to its runs."""
        return {"MLflow-Run": self.run_id, "Prefect-Flow-Run": flow_run_id}

    def metrics(self, commit: RoundCommit, labels: Labels) -> dict[str, float]:
        acquired = len(self.sample_ids)
        metrics: dict[str, float] = {
            "test_accuracy": self.test_accuracy,
            "test_nll": self.test_nll,
            "train_size": self.train_size,
            "labeled_size": self.train_size + acquired,
            "acquired": acquired,
            "pool_remaining": self.remaining - acquired,
            "seconds_train": self.seconds_train,
            "seconds_evaluate": self.seconds_evaluate,
            "seconds_score": self.seconds_score,
            "seconds_select": self.seconds_select,
            "seconds_label": labels.seconds,
            "seconds_dvc": commit.seconds_dvc,
            "seconds_git": commit.seconds_git,
            "seconds_compute": self.seconds_compute,
        }
        if self.epochs is not None:
            metrics["epochs"] = self.epochs
        metrics.update(self.evidence)
        metrics.update({f"trainer.{k}": v for k, v in self.trainer_metrics.items()})
        return {k: float(v) for k, v in metrics.items() if v is not None}

    def tags(self, commit: RoundCommit, flow_run_id: str) -> dict[str, str]:
        return {
            "git.commit": commit.commit,
            "git.tag": commit.tag,
            "dvc.labeled_set_md5": commit.labeled_set_md5,
            "prefect.flow_run_id": flow_run_id,
            "baldflow.strategy": self.strategy,
        }


def pending_batch(
    record: RoundRecord,
    config: Config,
    data: Any,
    labeled_md5: str,
    predictions: dict[str, list[float]] | None = None,
) -> PendingRound:
    """The batch of a round as handed to people, with the record to finish the round from."""
    return PendingRound(
        campaign=record.campaign,
        round=record.round,
        sample_ids=list(record.sample_ids),
        items=[describe_item(config.data.source, config.data.root, s) for s in record.sample_ids],
        class_names=[str(n) for n in data.class_names],
        base_md5=labeled_md5,
        created_at=utc_now(),
        state=record.to_state(),
        params=config.to_dict(),
        predictions=predictions or {},
    )


def training_set_input(workspace: Workspace, campaign: str, round_index: int) -> dict[str, Any]:
    """The labeled set a round trains on, as the DVC-versioned input its MLflow run records:
    the file, its md5 (DVC's hash, of the whole file) and the tag of the previous round."""
    rows = workspace.labeled(campaign)
    return {
        "name": f"{campaign}/labeled.csv",
        "md5": md5_of_text(labeled_text(rows)),
        "rows": len(rows),
        "path": str(workspace.labeled_path(campaign).relative_to(workspace.root)),
        "rev": round_tag(campaign, round_index - 1),
    }


def acquired_table(rows: Sequence[LedgerRow]) -> list[dict[str, Any]]:
    """The batch as people read it: the MLflow table and the Prefect artifact of a round."""
    return [
        {
            "rank": row.rank,
            "sample_id": row.sample_id,
            "label": row.label,
            "score": row.score,
            "first_pick_probability": row.first_pick_probability,
            "selection_key": row.selection_key,
            "labeled_by": row.labeled_by,
        }
        for row in rows
    ]


@dataclasses.dataclass
class CampaignRun:
    """What one run of the campaign flow carries from round to round."""

    config: Config
    workspace: Workspace
    tracker: Tracker
    handoff: HandOff
    data: CampaignPool
    oracle: Oracle
    parent_run_id: str
    flow_run_id: str
    logger: Any
    timings: list[dict[str, float]] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return self.config.campaign.name


def recorded_campaign_run(workspace: Workspace, campaign: str) -> str | None:
    """The parent MLflow run git recorded for the campaign: the run round 0's rows name."""
    for row in workspace.ledger(campaign):
        if row.round == 0 and row.mlflow_run_id:
            return row.mlflow_run_id
    return None


def committed_tracking(workspace: Workspace, campaign: str) -> dict[int, dict[str, Any]]:
    """What git recorded of each committed round (r >= 1), to repair its MLflow run from.

    The metrics and tags are those the round's run got when it completed normally, as far as
    rounds.csv and git keep them; the acquired table comes from the ledger.
    """
    ledger = workspace.ledger(campaign)
    out: dict[int, dict[str, Any]] = {}
    for row in workspace.rounds_summary(campaign):
        round_index = int(row["round"])
        run_id = row.get("mlflow_run_id")
        if round_index == 0 or not run_id:
            continue
        tag = round_tag(campaign, round_index)
        metrics = {
            "test_accuracy": row.get("test_accuracy"),
            "test_nll": row.get("test_nll"),
            "train_size": row.get("train_size"),
            "labeled_size": row.get("labeled"),
            "acquired": row.get("acquired"),
            "seconds_compute": row.get("seconds_compute"),
        }
        out[round_index] = {
            "run_id": run_id,
            "metrics": {k: float(v) for k, v in metrics.items() if v not in (None, "")},
            "tags": {
                "git.tag": tag,
                "git.commit": workspace.git("rev-parse", tag + "^{commit}").strip(),
                "dvc.labeled_set_md5": row.get("labeled_set_md5", ""),
            },
            "acquired": acquired_table([r for r in ledger if r.round == round_index]),
        }
    return out
