"""baldflow's application layer, its public Python API: what each `baldflow` command does,
with typed arguments and results and no printing (the CLI in baldflow/cli/ formats them).

Errors are the typed ones the CLI maps to exit codes: ConfigError (a parameter, 2),
PreflightError or LabelStudioError (what this machine lacks, 5), WorkspaceLockedError (another
run holds the workspace, 3), LabelImportError (a label file refused, 4), and
FileNotFoundError, LookupError (AuditError, NoPendingBatchError) or WorkspaceError (no such
workspace, campaign, round or file, 1).

Long operations take `progress`, a callable given each line worth telling a person while they
run ("starting Prefect...", the temporary server's address, a label import's count); by
default nothing is said. Heavy modules (torch, prefect, mlflow, dvc) are imported inside the
functions: importing this module is cheap, and Prefect's settings are in place before it is
imported.

One module per job: outcomes (the typed requests and results), workspaces, campaigns (run
and cycle), schedules, labels, audit, staging (the shard workers' staging area); everything
public is importable from here.
"""

from __future__ import annotations

from baldflow.app.audit import (
    diff_rounds,
    history,
    sample_story,
    show_round,
    status,
    verify,
    write_report,
)
from baldflow.app.campaigns import (
    nothing_to_do,
    preflight,
    prepare_prefect,
    recorded_bookkeeping,
    run_campaign,
    run_cycle,
    say_where_on_interrupt,
    start_prefect_api,
    where_campaign_stands,
)
from baldflow.app.labels import (
    import_labels,
    pending_batch,
    pull_labels,
)
from baldflow.app.outcomes import (
    DEFAULT_WORKSPACE,
    CampaignOutcome,
    CampaignStatus,
    DeployOutcome,
    InitOutcome,
    JoinOutcome,
    LabelOutcome,
    Progress,
    RunRequest,
    VerifyReport,
    WaitingBatch,
    WorkspaceStatus,
    say_nothing,
)
from baldflow.app.plugins import PluginRow, PluginSeam, list_plugins
from baldflow.app.schedules import (
    deploy_cycle,
    schedule_cycle,
)
from baldflow.app.staging import prune_staged_pools
from baldflow.app.workspaces import (
    default_workspace,
    init_workspace,
    join_workspace,
    resolve_config,
    workspace_root,
)

__all__ = [
    "CampaignOutcome",
    "CampaignStatus",
    "DEFAULT_WORKSPACE",
    "DeployOutcome",
    "InitOutcome",
    "JoinOutcome",
    "LabelOutcome",
    "PluginRow",
    "PluginSeam",
    "Progress",
    "RunRequest",
    "VerifyReport",
    "WaitingBatch",
    "WorkspaceStatus",
    "default_workspace",
    "deploy_cycle",
    "diff_rounds",
    "history",
    "import_labels",
    "init_workspace",
    "join_workspace",
    "list_plugins",
    "nothing_to_do",
    "pending_batch",
    "preflight",
    "prepare_prefect",
    "prune_staged_pools",
    "pull_labels",
    "recorded_bookkeeping",
    "resolve_config",
    "run_campaign",
    "run_cycle",
    "sample_story",
    "say_nothing",
    "say_where_on_interrupt",
    "schedule_cycle",
    "show_round",
    "start_prefect_api",
    "status",
    "verify",
    "where_campaign_stands",
    "workspace_root",
    "write_report",
]
