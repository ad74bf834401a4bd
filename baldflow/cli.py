"""The `baldflow` command line: init a workspace, run or resume a campaign, audit its history.

Heavy modules (torch, prefect, mlflow, dvc) are imported inside the commands so --help is fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_WORKSPACE = "baldflow-workspace"

EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_LOCKED = 3


def _default_workspace() -> str:
    env = os.environ.get("BALDFLOW_WORKSPACE")
    if env:
        return env
    # Inside a workspace already (cd'ed into it), use it rather than a nested one.
    cwd = Path.cwd()
    if (cwd / ".dvc").is_dir() and (cwd / ".git").exists() and (cwd / "data").is_dir():
        return "."
    return DEFAULT_WORKSPACE


def _workspace_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workspace",
        "-w",
        default=None,
        metavar="DIR",
        help="workspace directory (default: $BALDFLOW_WORKSPACE, the current directory if it "
        f"is a workspace, else ./{DEFAULT_WORKSPACE})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baldflow",
        description="Deep Bayesian batch active learning as an auditable Prefect + MLflow + "
        "DVC pipeline.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("init", help="create a workspace (git + DVC + params.yaml)")
    p.add_argument("directory", metavar="DIR", nargs="?", default=None)
    p.add_argument("--config", "-c", metavar="FILE", help="params.yaml to copy in")
    p.add_argument("--remote", metavar="URL", help="DVC remote (default: DIR/dvc-remote)")

    p = sub.add_parser("run", help="run or resume a campaign")
    _workspace_arg(p)
    p.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="parameter file (default: the workspace's params.yaml, else built-in defaults)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one parameter, e.g. --set acquisition.batch_size=20 (repeatable)",
    )

    p = sub.add_parser("history", help="which samples were acquired when, by which model, why")
    _workspace_arg(p)
    p.add_argument("--campaign", metavar="NAME")
    p.add_argument("--round", type=int, metavar="N")
    p.add_argument("--sample", metavar="ID")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")

    p = sub.add_parser("status", help="campaigns in a workspace, rounds done, latest accuracy")
    _workspace_arg(p)
    p.add_argument("--format", choices=["table", "json"], default="table")
    return parser


# ---------------------------------------------------------------------------- commands
def cmd_init(args: argparse.Namespace) -> int:
    from baldflow.config import dump_yaml, load_config
    from baldflow.workspace import Workspace

    directory = args.directory or _default_workspace()
    if args.config:
        load_config(args.config)  # validate before creating anything
        text = Path(args.config).read_text()
    else:
        text = dump_yaml(load_config(None, check_names=False))
    ws = Workspace.init(directory, params_text=text, remote=args.remote)
    ws.close()
    print(f"workspace ready: {ws.root}")
    print(f"  parameters: {ws.params_path}")
    print(f"  run a campaign: baldflow run --workspace {directory}")
    return 0


def _resolve_config(args: argparse.Namespace, ws_root: Path):
    from baldflow.config import load_config

    path = args.config
    if path is None and (ws_root / "params.yaml").exists():
        path = ws_root / "params.yaml"
    return load_config(path, args.overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from baldflow.config import dump_yaml
    from baldflow.workspace import Workspace, offline_environment, workspace_lock

    ws_root = Path(args.workspace or _default_workspace()).resolve()
    config = _resolve_config(args, ws_root)
    if not Workspace.is_workspace(ws_root):
        params_text = Path(args.config).read_text() if args.config else dump_yaml(config)
        Workspace.init(ws_root, params_text=params_text).close()
    # Take the lock before starting Prefect's server: a second writer fails in a second or two.
    with workspace_lock(ws_root):
        offline_environment(ws_root)
        # One line per round from the flow is the progress report; the "Finished in state
        # Completed()" line of each task would bury it (task states stay visible in the UI).
        os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "WARNING")
        print(
            f"baldflow: campaign {config.campaign.name!r} in {ws_root} "
            f"({config.acquisition.strategy}, {config.campaign.rounds} rounds of "
            f"{config.acquisition.batch_size}); starting Prefect...",
            flush=True,
        )
        from flows.campaign import campaign_flow

        result = campaign_flow(
            workspace=str(ws_root), params=config.to_dict(), campaign=config.campaign.name
        )
    _print_run_summary(result)
    return 0


def _print_run_summary(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    bookkeeping = {t["round"]: t for t in result.get("timings", [])}
    table = Table(title=f"campaign {result['campaign']}")
    # Round r's model is trained on the labeled set of round r-1, then acquires the batch that
    # makes the labeled count of round r.
    for column in (
        "round",
        "trained on",
        "test accuracy",
        "labeled",
        "acquisition s",
        "bookkeeping s",
    ):
        table.add_column(column, justify="right")
    for row in result["rounds"]:
        r = int(row["round"])
        acc = row.get("test_accuracy") or ""
        timing = bookkeeping.get(r)
        table.add_row(
            str(r),
            str(row.get("train_size") or "-") if r > 0 else "-",
            f"{float(acc):.4f}" if acc else "-",
            str(row.get("labeled", "")),
            f"{float(row['seconds_acquisition']):.2f}" if row.get("seconds_acquisition") else "-",
            f"{timing['seconds_bookkeeping']:.2f}" if timing else "-",
        )
    console.print(table)
    if result.get("stopped") == "pool-empty":
        console.print("The pool is empty: every sample is labeled, so the campaign ended.")
    ws = result["workspace"]
    name = result["campaign"]
    # Plain print: rich would wrap the long commands mid-word on narrow terminals.
    print("Where to look next:")
    print(f"  MLflow UI:     mlflow ui --backend-store-uri {result['tracking_uri']}")
    print(f"  Prefect UI:    PREFECT_HOME={ws}/.prefect prefect server start")
    print(f"  git tags:      git -C {ws} tag --list '{name}/round-*'")
    print(f"  audit ledger:  baldflow history --workspace {ws} --campaign {name}")
    print(f"  status:        baldflow status --workspace {ws}")


def _ledger_rows(ws_root: Path, campaign: str | None):
    from baldflow.workspace import Workspace

    ws = Workspace(ws_root)
    if not Workspace.is_workspace(ws_root):
        raise FileNotFoundError(f"{ws_root} is not a baldflow workspace (run `baldflow init`)")
    names = ws.campaigns()
    if campaign is not None:
        if campaign not in names:
            known = ", ".join(names) or "none yet"
            raise LookupError(f"campaign {campaign!r} is not in {ws_root} (campaigns: {known})")
        names = [campaign]
    rows = []
    for name in names:
        rows.extend(ws.ledger(name))
    return rows


def cmd_history(args: argparse.Namespace) -> int:
    import dataclasses

    from baldflow.workspace.ledger import ledger_text

    ws_root = Path(args.workspace or _default_workspace()).resolve()
    rows = _ledger_rows(ws_root, args.campaign)
    if args.round is not None:
        rows = [r for r in rows if r.round == args.round]
    if args.sample is not None:
        rows = [r for r in rows if r.sample_id == args.sample]
    if args.format == "csv":
        sys.stdout.write(ledger_text(rows, header=True))
    elif args.format == "json":
        import json

        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"acquisitions in {ws_root}")
        columns = [
            "campaign",
            "round",
            "rank",
            "sample_id",
            "label",
            "strategy",
            "score",
            "selection_probability",
            "selection_key",
            "acquired_at",
            "mlflow_run_id",
        ]
        for column in columns:
            table.add_column(column.replace("selection_", "sel. "), overflow="fold")
        for r in rows:
            record = dataclasses.asdict(r)
            table.add_row(*[_short(record[c]) for c in columns])
        Console().print(table)
        if not rows:
            print("no acquisitions match")
    return 0


def _short(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def cmd_status(args: argparse.Namespace) -> int:
    from baldflow.workspace import Workspace

    ws_root = Path(args.workspace or _default_workspace()).resolve()
    if not Workspace.is_workspace(ws_root):
        raise FileNotFoundError(f"{ws_root} is not a baldflow workspace (run `baldflow init`)")
    ws = Workspace(ws_root)
    import yaml

    records = []
    for name in ws.campaigns():
        rounds = ws.rounds_summary(name)
        done = ws.completed_rounds(name)
        accuracy = next(
            (float(r["test_accuracy"]) for r in reversed(rounds) if r.get("test_accuracy")), None
        )
        params_file = ws.campaign_dir(name) / "campaign.yaml"
        params = yaml.safe_load(params_file.read_text()) if params_file.exists() else {}
        records.append(
            {
                "campaign": name,
                "strategy": (params.get("acquisition") or {}).get("strategy"),
                "rounds_done": done[-1] if done else None,
                "labeled": len(ws.labeled(name)),
                "latest_test_accuracy": accuracy,
                "latest_tag": f"{name}/round-{done[-1]:04d}" if done else None,
            }
        )
    if args.format == "json":
        import json

        print(json.dumps(records, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"campaigns in {ws_root}")
    for column in ("campaign", "strategy", "rounds done", "labeled", "latest test acc.", "tag"):
        # Names and tags are meant to be copied: never cut or fold them; wrap the rest.
        table.add_column(column, no_wrap=column in ("campaign", "tag"))
    for rec in records:
        acc = rec["latest_test_accuracy"]
        table.add_row(
            rec["campaign"],
            str(rec["strategy"]),
            str(rec["rounds_done"]),
            str(rec["labeled"]),
            f"{acc:.4f}" if acc is not None else "-",
            str(rec["latest_tag"]),
        )
    Console().print(table)
    if not records:
        print("no campaigns yet: baldflow run --workspace", ws_root)
    return 0


COMMANDS = {"init": cmd_init, "run": cmd_run, "history": cmd_history, "status": cmd_status}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from baldflow.config import ConfigError
    from baldflow.workspace.lock import WorkspaceLockedError

    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"ConfigError: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except WorkspaceLockedError as exc:
        print(f"WorkspaceLockedError: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except (FileNotFoundError, LookupError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
