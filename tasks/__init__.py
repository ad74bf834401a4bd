"""Prefect tasks of a campaign, one per step or side effect, each a thin wrapper over baldflow/.

Installed as baldflow.tasks. Every task is safe to run twice; see each module for why.
"""

# The values tasks hand to each other, which the flows pass along and annotate with.
from baldflow.compute.features import FeatureJob
from baldflow.compute.fitting import Trained
from baldflow.compute.scoring import PoolScores
from baldflow.compute.sharding import ShardJob, ShardResult
from baldflow.tasks.acquisition import assess_batch, score_pool, select_batch
from baldflow.tasks.data import prepare_data
from baldflow.tasks.features import (
    embed_pool_here,
    feature_ranges,
    finish_features,
    open_features,
    plan_features,
)
from baldflow.tasks.flow_runs import close_stale_flow_runs
from baldflow.tasks.label_studio import (
    pre_annotate_batch,
    pull_from_label_studio,
    send_to_label_studio,
)
from baldflow.tasks.model import (
    check_model,
    evaluate_model,
    load_handoff_model,
    save_handoff_model,
    train_model,
)
from baldflow.tasks.oracle import clear_handoff, hand_off_batch, label_batch, make_oracle
from baldflow.tasks.remote import claim_round, discard_lost_round, sync_workspace
from baldflow.tasks.scoring import keep_pool_scores, merge_shard_scores
from baldflow.tasks.tracking import (
    adopt_campaign_run,
    end_run,
    finish_campaign,
    park_round_run,
    publish_batch,
    retire_campaign_run,
    start_campaign_tracking,
    start_round_run,
    track_round,
    unpark_round_run,
)
from baldflow.tasks.workspace import OpenedWorkspace, open_workspace, version_round

__all__ = [
    "FeatureJob",
    "PoolScores",
    "ShardJob",
    "ShardResult",
    "Trained",
    "adopt_campaign_run",
    "assess_batch",
    "OpenedWorkspace",
    "check_model",
    "claim_round",
    "clear_handoff",
    "close_stale_flow_runs",
    "discard_lost_round",
    "embed_pool_here",
    "feature_ranges",
    "finish_features",
    "end_run",
    "evaluate_model",
    "finish_campaign",
    "hand_off_batch",
    "keep_pool_scores",
    "label_batch",
    "load_handoff_model",
    "make_oracle",
    "merge_shard_scores",
    "open_features",
    "open_workspace",
    "park_round_run",
    "plan_features",
    "pre_annotate_batch",
    "prepare_data",
    "publish_batch",
    "pull_from_label_studio",
    "retire_campaign_run",
    "save_handoff_model",
    "score_pool",
    "select_batch",
    "send_to_label_studio",
    "sync_workspace",
    "start_campaign_tracking",
    "start_round_run",
    "track_round",
    "train_model",
    "unpark_round_run",
    "version_round",
]
