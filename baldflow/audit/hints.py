"""Commands and links that lead to a workspace's records, printed so that they work as printed.

`make run` never activates the virtual environment, so a bare `mlflow` or `baldflow` in a new
shell is "command not found": a command that PATH would not find is printed with the full path
of the running interpreter's environment. MLflow 3's UI opens an experiment on its GenAI overview
("No data" for a campaign): links go to the runs view instead.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

# What `mlflow ui` listens on when not told otherwise (mlflow/utils/cli_args.py, MLflow 3.17).
MLFLOW_UI_URL = "http://127.0.0.1:5000"
# And `prefect server start`.
PREFECT_UI_URL = "http://127.0.0.1:4200"


def environment_bin() -> Path:
    """The directory of the running interpreter: its environment's console scripts live there.

    Not resolved: a virtual environment's python is a link to the base interpreter, whose own
    directory holds none of this environment's scripts.
    """
    return Path(os.path.abspath(sys.executable)).parent


def shell_command(name: str) -> str:
    """`name` as a new shell runs it: bare when PATH finds this environment's copy (or when this
    environment has none), else the copy's full path."""
    local = environment_bin() / name
    if not local.is_file():
        return name
    found = shutil.which(name)
    if found is not None:
        try:
            if os.path.samefile(found, local):
                return name
        except OSError:
            pass
    return shlex.quote(str(local))


def is_local_store(tracking_uri: str) -> bool:
    """True for a store on this machine (SQLite, a file path), which needs `mlflow ui` to browse;
    False for a tracking server, which serves its own UI."""
    return not tracking_uri.startswith(("http://", "https://", "databricks"))


def mlflow_ui_url(
    tracking_uri: str, experiment_id: str | int | None = None, run_id: str | None = None
) -> str:
    """Where the MLflow UI shows an experiment's runs (or one run): `#/experiments/<id>/runs`
    is the runs table, where `#/experiments/<id>` would open MLflow 3's GenAI overview."""
    base = MLFLOW_UI_URL if is_local_store(tracking_uri) else tracking_uri.rstrip("/")
    if experiment_id is None or experiment_id == "":
        return base
    url = f"{base}/#/experiments/{experiment_id}/runs"
    return f"{url}/{run_id}" if run_id else url


def mlflow_ui_command(tracking_uri: str) -> str | None:
    """The command that serves the UI of a local store; None for a tracking server.

    A new shell lacks the environment baldflow sets for itself: the command turns MLflow's
    telemetry off on its own line, so that it keeps everything on the machine as printed.
    """
    if not is_local_store(tracking_uri):
        return None
    return (
        f"MLFLOW_DISABLE_TELEMETRY=true {shell_command('mlflow')} ui "
        f"--backend-store-uri {shlex.quote(tracking_uri)}"
    )


def prefect_ui_command(workspace: str | Path) -> str:
    """The command that browses the flow runs the temporary servers kept in the workspace.

    `baldflow server`, not `prefect server start`: it binds 127.0.0.1, uses the workspace's
    Prefect home and turns Prefect's telemetry off, which a bare `prefect server start` in a
    new shell would leave on.
    """
    return f"{shell_command('baldflow')} server --workspace {shlex.quote(str(workspace))}"


def where_to_look(result: dict[str, Any], experiment_id: str | int | None = None) -> list[str]:
    """The "Where to look next" lines after a campaign run (a campaign flow's result).

    `experiment_id` defaults to that of the campaign's parent MLflow run.
    """
    ws = str(result["workspace"])
    name = result["campaign"]
    uri = str(result["tracking_uri"])
    if experiment_id is None and result.get("parent_run_id"):
        from baldflow.audit.queries import read_mlflow_run

        experiment_id = read_mlflow_run(uri, result["parent_run_id"]).get("experiment_id")
    baldflow = shell_command("baldflow")
    ws_arg = shlex.quote(ws)
    lines = ["Where to look next:"]
    command = mlflow_ui_command(uri)
    if command:
        lines.append(f"  MLflow UI:     {command}")
        lines.append(f"                 then open {mlflow_ui_url(uri, experiment_id)}")
    else:
        lines.append(f"  MLflow UI:     {mlflow_ui_url(uri, experiment_id)}")
    lines += [
        f"  Prefect UI:    {prefect_ui_command(ws)}",
        f"                 then open {PREFECT_UI_URL}",
        f"  git tags:      git -C {ws_arg} tag --list '{name}/round-*'",
        f"  audit ledger:  {baldflow} history --workspace {ws_arg} --campaign {name}",
        f"  status:        {baldflow} status --workspace {ws_arg}",
    ]
    return lines
