"""Where a command works: the default workspace, its parameters, creating or joining one."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from baldflow.app.outcomes import DEFAULT_WORKSPACE, InitOutcome, JoinOutcome

if TYPE_CHECKING:
    from baldflow.config import Config




# ---------------------------------------------------------------------------- parameters
def default_workspace() -> str:
    """$BALDFLOW_WORKSPACE, else "." inside a workspace, else ./baldflow-workspace."""
    env = os.environ.get("BALDFLOW_WORKSPACE")
    if env:
        return env
    # Inside a workspace already (cd'ed into it), use it rather than a nested one.
    from baldflow.workspace.repo import Workspace

    if Workspace.is_workspace(Path.cwd()):
        return "."
    return DEFAULT_WORKSPACE


def workspace_root(workspace: str | Path | None) -> Path:
    """The absolute workspace directory `workspace` names (None: default_workspace())."""
    return Path(workspace or default_workspace()).resolve()


def resolve_config(
    workspace: str | Path,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    campaign: str | None = None,
) -> Config:
    """A run's parameters: the file (or params.yaml, or defaults) and overrides; with
    `campaign`, its recorded identity in between, so resuming it needs no override repeated."""
    from baldflow.config import ConfigError, load_config

    ws_root = Path(workspace)
    path = config
    if path is None and (ws_root / "params.yaml").exists():
        path = ws_root / "params.yaml"
    if campaign is None:
        return load_config(path, list(overrides))
    from baldflow.preflight import recorded_identity

    loaded = load_config(path, list(overrides), identity=recorded_identity(ws_root, campaign))
    if loaded.campaign.name != campaign:
        raise ConfigError(
            f"--campaign {campaign} and campaign.name={loaded.campaign.name} disagree; "
            f"fix: drop --set campaign.name (--campaign resumes {campaign}), or drop --campaign "
            "to start a new campaign",
            fields=("campaign.name",),
        )
    return loaded


# ---------------------------------------------------------------------------- workspaces
def init_workspace(
    directory: str | Path | None = None,
    *,
    config: str | Path | None = None,
    dvc_remote: str | None = None,
    git_remote: str | None = None,
) -> InitOutcome:
    """Create a workspace: git, DVC with a remote, params.yaml (a copy of `config`, validated
    first, else the defaults); with `git_remote`, shared through it."""
    from baldflow.config import dump_yaml, load_config
    from baldflow.workspace import Workspace

    directory = directory or default_workspace()
    if config:
        load_config(config)  # validate before creating anything
        text = Path(config).read_text()
    else:
        text = dump_yaml(load_config(None, check_names=False))
    ws = Workspace.init(directory, params_text=text, remote=dvc_remote)
    dvc_url = None
    if git_remote:
        from baldflow.workspace import remote

        remote.connect(ws, git_remote)
        dvc_url = remote.dvc_remote_url(ws)
    ws.close()
    return InitOutcome(ws.root, ws.params_path, git_remote, dvc_url)


def join_workspace(url: str, directory: str | Path | None = None) -> JoinOutcome:
    """Another operator's copy of a shared workspace: clone its git remote into `directory`
    and pull its data from the DVC remote it names."""
    from baldflow.workspace import remote

    ws = remote.clone(url, directory or default_workspace())
    campaigns = ws.campaigns()
    dvc_url = remote.dvc_remote_url(ws)
    ws.close()
    return JoinOutcome(ws.root, url, dvc_url, {name: ws.last_round(name) for name in campaigns})


