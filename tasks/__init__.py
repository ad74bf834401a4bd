"""Prefect tasks of a campaign, one per step, each a thin wrapper over baldflow/."""

from baldflow.tasks.acquisition import score_pool, select_batch
from baldflow.tasks.data import prepare_data
from baldflow.tasks.flow_runs import close_stale_flow_runs
from baldflow.tasks.model import evaluate_model, train_model
from baldflow.tasks.oracle import hand_off_batch, label_batch
from baldflow.tasks.tracking import (
    finish_campaign,
    publish_batch,
    start_campaign_tracking,
    start_round_run,
    track_round,
)
from baldflow.tasks.workspace import recover_workspace, version_round

__all__ = [
    "close_stale_flow_runs",
    "evaluate_model",
    "finish_campaign",
    "hand_off_batch",
    "label_batch",
    "prepare_data",
    "publish_batch",
    "recover_workspace",
    "score_pool",
    "select_batch",
    "start_campaign_tracking",
    "start_round_run",
    "track_round",
    "train_model",
    "version_round",
]
