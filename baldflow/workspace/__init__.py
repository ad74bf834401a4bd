"""A campaign workspace: git + DVC versioning, the audit ledger, MLflow tracking, the lock."""

from baldflow.workspace.ledger import LEDGER_FIELDS, LedgerError, LedgerRow
from baldflow.workspace.lock import WorkspaceLockedError, workspace_lock
from baldflow.workspace.repo import (
    Recovery,
    RoundCommit,
    Workspace,
    WorkspaceError,
    offline_environment,
    round_tag,
)

__all__ = [
    "LEDGER_FIELDS",
    "LedgerError",
    "LedgerRow",
    "Recovery",
    "RoundCommit",
    "Workspace",
    "WorkspaceError",
    "WorkspaceLockedError",
    "offline_environment",
    "round_tag",
    "workspace_lock",
]
