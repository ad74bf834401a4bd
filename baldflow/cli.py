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
EXIT_LABELS = 4
EXIT_PREFLIGHT = 5  # this machine lacks what the campaign needs (data files, device, tracking)

# One metavar for --set in every command that takes it.
SET_METAVAR = "SECTION.KEY=VALUE"
# Old command names kept working for a release, but no longer listed: `serve` is `schedule`.
HIDDEN_ALIASES = ("serve",)
# Commands that leave Ctrl-C and SIGTERM to Prefect's runner, which pauses its schedule on them.
SCHEDULE_COMMANDS = ("schedule", *HIDDEN_ALIASES)


def _default_workspace() -> str:
    env = os.environ.get("BALDFLOW_WORKSPACE")
    if env:
        return env
    # Inside a workspace already (cd'ed into it), use it rather than a nested one.
    from baldflow.workspace.repo import Workspace

    if Workspace.is_workspace(Path.cwd()):
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


class _HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default after its help, unless the help already says what it is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or action.required
            or action.default in (None, False, [], argparse.SUPPRESS)
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """A parser whose help shows defaults; its subcommands' parsers are of the same kind."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _campaign_arg(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--campaign", metavar="NAME", help=f"campaign name (default: {default})")


def build_parser() -> argparse.ArgumentParser:
    from baldflow import __version__

    parser = _Parser(
        prog="baldflow",
        description="Deep Bayesian batch active learning as an auditable Prefect + MLflow + "
        "DVC pipeline.",
        epilog="`baldflow COMMAND --help` describes a command and its options.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {__version__}",
        help="print the version and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "init",
        help="create a workspace (git + DVC + params.yaml)",
        description="Create a workspace: a git repository with DVC initialised, a local DVC "
        "remote (DIR/dvc-remote unless --remote), a .gitignore and params.yaml (the built-in "
        "defaults, or a copy of --config). `baldflow run` does this itself when its workspace "
        "does not exist yet.",
    )
    p.add_argument(
        "directory",
        metavar="DIR",
        nargs="?",
        default=None,
        help="directory to make a workspace (default: $BALDFLOW_WORKSPACE, the current "
        f"directory if it is a workspace, else ./{DEFAULT_WORKSPACE})",
    )
    p.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="parameter file to copy in, validated first (default: the built-in defaults)",
    )
    p.add_argument(
        "--dvc-remote",
        "--remote",
        dest="remote",
        metavar="URL",
        help="DVC remote the labeled sets are pushed to: a shared directory, ssh:// or s3:// "
        "(default: DIR/dvc-remote)",
    )
    p.add_argument(
        "--git-remote",
        metavar="URL",
        help="share the workspace: push it to this git remote (an empty bare repository), and "
        "every committed round after it (team mode; see README, Working as a team; default: none, "
        "a workspace of one machine)",
    )
    p.add_argument(
        "--clone",
        metavar="URL",
        help="join a shared workspace: clone its git remote into DIR and pull its data from "
        "the DVC remote it names (default: none, create a new workspace)",
    )

    p = sub.add_parser(
        "run",
        help="run or resume a campaign",
        description="Run the campaign the parameters describe, or resume it at its last "
        "completed round. Prints a line per round, then a table of the rounds and the commands "
        "that show the results. Makes the workspace first if it is not one yet.",
    )
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
        metavar=SET_METAVAR,
        help="override one parameter, e.g. --set acquisition.batch_size=20 (repeatable; "
        "default: none)",
    )
    p.add_argument(
        "--campaign",
        metavar="NAME",
        help="resume NAME with its recorded parameters (default: the campaign that "
        "campaign.name names)",
    )

    p = sub.add_parser(
        "history",
        help="which samples were acquired when, by which model, why",
        description="The ledger: one row per acquired sample with its campaign, round, rank, "
        "label, strategy, score, first-pick probability and selection key, round seed, time and "
        "the MLflow run of the model that chose it. With --sample (table format), that sample's "
        "whole story: its position in the batch of the round that acquired it, and its score, "
        "key and rank by score in every round whose pool scores were kept (picked or not); a "
        "pool sample never acquired is said so (exit 0), an id not in the pool is an error.",
    )
    _workspace_arg(p)
    _campaign_arg(p, "every campaign of the workspace")
    p.add_argument(
        "--round",
        type=int,
        metavar="N",
        help="only round N; 0 is the initial labeled set (default: every round)",
    )
    p.add_argument(
        "--sample",
        metavar="ID",
        help="only this sample; the table tells its whole story (default: every sample)",
    )
    p.add_argument(
        "--format",
        choices=["table", "json", "csv"],
        default="table",
        help="a table for people; json; or csv for spreadsheets, where text cells that look "
        "like formulas are neutralised",
    )

    p = sub.add_parser(
        "status",
        help="campaigns in a workspace, rounds done, latest accuracy",
        description="Every campaign of the workspace: its strategy, the rounds done (acquisition "
        "rounds after round 0, the initial labeled set), the labeled count, the latest test "
        "accuracy and git tag; and any batch that waits for labels.",
    )
    _workspace_arg(p)
    p.add_argument("--format", choices=["table", "json"], default="table", help="a table, or json")
    _add_cycle_parsers(sub)
    _add_verify_parser(sub)
    _add_stack_parser(sub)
    _add_label_studio_parser(sub)
    _add_pool_parser(sub)
    return parser


def _add_verify_parser(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="check that git tags, DVC versions, the ledger and MLflow runs agree",
        description="Check a workspace at rest: round tags contiguous from 0, the labeled set "
        "read through DVC at every tag equal to the ledger up to that round, no sample twice, "
        "one FINISHED MLflow run per committed round and none RUNNING, git clean (but for what "
        "baldflow writes outside the history, such as reports), no pending batch for a "
        "committed round. Prints each problem with the run, tag or file and the command that "
        "repairs it. Exit status: 0 consistent, "
        f"{EXIT_ERROR} problems found (or no such workspace or campaign), {EXIT_LOCKED} the "
        "workspace is in use by a run.",
    )
    _workspace_arg(p)
    _campaign_arg(p, "every campaign")
    p.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow store (default: tracking.mlflow_uri of the workspace's params.yaml, else "
        "its own store under mlflow/)",
    )
    p.add_argument(
        "--experiment",
        metavar="NAME",
        help="MLflow experiment (default: tracking.experiment of params.yaml)",
    )


# ---------------------------------------------------------------------------- commands
def cmd_init(args: argparse.Namespace) -> int:
    from baldflow.config import dump_yaml, load_config
    from baldflow.workspace import Workspace

    directory = args.directory or _default_workspace()
    if args.clone:
        return _join_workspace(args, directory)
    if args.config:
        load_config(args.config)  # validate before creating anything
        text = Path(args.config).read_text()
    else:
        text = dump_yaml(load_config(None, check_names=False))
    ws = Workspace.init(directory, params_text=text, remote=args.remote)
    if args.git_remote:
        from baldflow.workspace import remote

        remote.connect(ws, args.git_remote)
        dvc_url = remote.dvc_remote_url(ws)
    ws.close()
    print(f"workspace ready: {ws.root}")
    if args.git_remote:
        print(f"  shared through: {args.git_remote} (git) and {dvc_url} (DVC)")
    print(f"  parameters: {ws.params_path}")
    from baldflow.audit.hints import shell_command

    print(f"  run a campaign: {shell_command('baldflow')} run --workspace {_quoted(directory)}")
    return 0


def _join_workspace(args: argparse.Namespace, directory: str | Path) -> int:
    """`init DIR --clone URL`: another operator's copy of a shared workspace."""
    from baldflow.workspace import remote

    if args.config or args.remote or args.git_remote:
        print(
            "--clone takes the parameters and remotes from the shared workspace: drop "
            "--config, --dvc-remote and --git-remote",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    ws = remote.clone(args.clone, directory)
    campaigns = ws.campaigns()
    dvc_url = remote.dvc_remote_url(ws)
    ws.close()
    print(f"joined the shared workspace {args.clone}: {ws.root}")
    print(f"  DVC remote: {dvc_url}")
    for name in campaigns:
        print(f"  campaign {name}: last committed round {ws.last_round(name)}")
    from baldflow.audit.hints import shell_command

    print(f"  run a campaign: {shell_command('baldflow')} run --workspace {_quoted(directory)}")
    return 0


def _resolve_config(args: argparse.Namespace, ws_root: Path):
    """The run's parameters: the file (or defaults) and --set; with --campaign NAME, NAME's
    recorded identity in between, so resuming another campaign needs no --set repeated."""
    from baldflow.config import ConfigError, load_config

    path = args.config
    if path is None and (ws_root / "params.yaml").exists():
        path = ws_root / "params.yaml"
    campaign = getattr(args, "campaign", None)
    if campaign is None:
        return load_config(path, args.overrides)
    from baldflow.preflight import recorded_identity

    config = load_config(path, args.overrides, identity=recorded_identity(ws_root, campaign))
    if config.campaign.name != campaign:
        raise ConfigError(
            f"--campaign {campaign} and campaign.name={config.campaign.name} disagree; "
            f"fix: drop --set campaign.name (--campaign resumes {campaign}), or drop --campaign "
            "to start a new campaign",
            fields=("campaign.name",),
        )
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from baldflow.config import dump_yaml
    from baldflow.workspace import Workspace, offline_environment, workspace_lock

    ws_root = Path(args.workspace or _default_workspace()).resolve()
    config = _resolve_config(args, ws_root)
    from baldflow.preflight import check as preflight  # one-line errors before any server

    preflight(config, ws_root)
    _say_where_on_interrupt(ws_root, config.campaign.name, config.campaign.rounds)
    ws_root.mkdir(parents=True, exist_ok=True)
    # Take the lock before starting Prefect's server: a second writer fails in a second or two.
    # Creating the workspace is writing to it too (and completes a creation that was killed).
    with workspace_lock(ws_root):
        if not Workspace.is_ready(ws_root):
            params_text = Path(args.config).read_text() if args.config else dump_yaml(config)
            Workspace.init(ws_root, params_text=params_text).close()
        offline_environment(ws_root)
        # Nothing to do is answered from the workspace: no server started, no flow run recorded.
        finished = _nothing_to_do(ws_root, config)
        if finished is not None:
            name = config.campaign.name
            if finished.waiting is not None:
                said = f"waits for labels for round {finished.waiting}"
            else:
                said = (
                    f"is complete: all {config.campaign.rounds} rounds are done (raise "
                    "campaign.rounds to go on)"
                )
            print(
                f"baldflow: campaign {name!r} in {ws_root} {said}; nothing was run or recorded",
                flush=True,
            )
            _say_batch_beyond(ws_root, name, finished)
            _print_run_summary(_finished_result(ws_root, finished, config.tracking.experiment))
            return 0
        # One line per round from the flow is the progress report; the "Finished in state
        # Completed()" line of each task would bury it (task states stay visible in the UI).
        os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "WARNING")
        print(
            f"baldflow: campaign {config.campaign.name!r} in {ws_root} "
            f"({config.acquisition.strategy}, {config.campaign.rounds} rounds of "
            f"{config.acquisition.batch_size}); starting Prefect...",
            flush=True,
        )
        _start_prefect_api(ws_root)
        from baldflow.flows.campaign import campaign_flow

        result = campaign_flow(
            workspace=str(ws_root), params=config.to_dict(), campaign=config.campaign.name
        )
    _print_run_summary(result)
    return 0


def _recorded_bookkeeping(result: dict) -> dict[int, float]:
    """Bookkeeping seconds of the rounds earlier runs completed, as their MLflow runs hold them.

    Best effort: the table is a summary, and a tracking store that cannot be read here only
    leaves those cells empty.
    """
    try:
        from baldflow.workspace import Workspace
        from baldflow.workspace.finished import recorded_round_metric
        from baldflow.workspace.tracking import Tracker

        workspace_id = Workspace(result["workspace"]).workspace_id
        experiment = result.get("experiment", "baldflow")
        uri, name = result["tracking_uri"], result["campaign"]
        found = recorded_round_metric(uri, experiment, workspace_id, name, "seconds_bookkeeping")
        if found is not None:
            return found
        tracker = Tracker(uri, experiment, None, workspace_id)
        return {
            int(row["round"]): float(row["seconds_bookkeeping"])
            for row in tracker.round_metrics(result["campaign"])
            if "seconds_bookkeeping" in row
        }
    except Exception:  # noqa: BLE001
        return {}


def _print_run_summary(result: dict) -> None:
    from rich.table import Table

    from baldflow.audit.hints import where_to_look
    from baldflow.audit.report import console as make_console

    console = make_console()
    # A run that stopped for labels leads with what the user must do now.
    _print_waiting(result)
    bookkeeping = {t["round"]: t["seconds_bookkeeping"] for t in result.get("timings", [])}
    earlier = [int(row["round"]) for row in result["rounds"] if int(row["round"]) > 0]
    if any(r not in bookkeeping for r in earlier):
        bookkeeping = {**_recorded_bookkeeping(result), **bookkeeping}
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
        seconds = bookkeeping.get(r)
        table.add_row(
            str(r),
            str(row.get("train_size") or "-") if r > 0 else "-",
            f"{float(acc):.4f}" if acc else "-",
            str(row.get("labeled", "")),
            f"{float(row['seconds_acquisition']):.2f}" if row.get("seconds_acquisition") else "-",
            f"{seconds:.2f}" if seconds is not None else "-",
        )
    if result["rounds"]:  # none before round 0 is labeled: no empty table
        console.print(table)
    if result.get("stopped") == "pool-empty":
        console.print("The pool is empty: every sample is labeled, so the campaign ended.")
    # Plain print: rich would wrap the long commands mid-word on narrow terminals.
    for line in where_to_look(result):
        print(line)


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
        if args.format == "table" or not rows:
            from baldflow.audit.queries import sample_story
            from baldflow.audit.report import print_story

            # Also for csv/json with no rows: an id that is not in the pool is an error
            # (AuditError, the not-found exit), never an empty answer like "never acquired".
            story = sample_story(ws_root, args.sample, args.campaign)
            if args.format == "table":
                print_story(story)
                return 0
    if args.format == "csv":
        # For people (spreadsheets): formula-like text cells neutralised; ledger.csv stays exact.
        sys.stdout.write(ledger_text(rows, header=True, for_people=True))
    elif args.format == "json":
        import json

        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    else:
        from rich.table import Table

        from baldflow.audit.report import console, plain

        table = Table(title=plain(f"acquisitions in {ws_root}"))
        from baldflow.audit.report import LEDGER_COLUMNS

        columns = ["campaign", *LEDGER_COLUMNS, "mlflow_run_id"]
        for column in columns:
            table.add_column(column.replace("selection_", "sel. "), overflow="fold")
        for r in rows:
            record = dataclasses.asdict(r)
            table.add_row(*[plain(_short(record[c])) for c in columns])
        console().print(table)
        if not rows:
            print("no acquisitions match")
    return 0


def _quoted(path: object) -> str:
    """A path as a shell reads it back (quoted when it has spaces or other specials)."""
    import shlex

    return shlex.quote(str(path))


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
                # The campaign's length as it records it (None in records older than that).
                "rounds_asked": (params.get("campaign") or {}).get("rounds"),
                "labeled": len(ws.labeled(name)),
                "latest_test_accuracy": accuracy,
                "latest_tag": f"{name}/round-{done[-1]:04d}" if done else None,
            }
        )
    if args.format == "json":
        import json

        print(json.dumps(records, indent=2))
        return 0
    from rich.table import Table

    from baldflow.audit.report import console, plain

    table = Table(
        title=plain(f"campaigns in {ws_root}"),
        caption="rounds done: acquisition rounds after round 0, the initial labeled set",
    )
    for column in ("campaign", "strategy", "rounds done", "labeled", "latest test acc.", "tag"):
        # Names and tags are meant to be copied: never cut or fold them; wrap the rest.
        table.add_column(column, no_wrap=column in ("campaign", "tag"))
    for rec in records:
        acc = rec["latest_test_accuracy"]
        table.add_row(
            plain(rec["campaign"]),
            plain(rec["strategy"] or "-"),
            plain("-" if rec["rounds_done"] is None else str(rec["rounds_done"])),
            plain(str(rec["labeled"])),
            f"{acc:.4f}" if acc is not None else "-",
            plain(rec["latest_tag"] or "-"),
        )
    console().print(table)
    from baldflow.labeling import pending_batches
    from baldflow.labeling.label_studio import project_address
    from baldflow.labeling.studio_rounds import StudioLink

    waiting = pending_batches(ws_root)
    for handoff, pending in waiting:
        done = len(set(handoff.imported(pending.round)) & set(pending.sample_ids))
        where = handoff.sheet_path(pending.round)
        link = StudioLink.load(handoff)
        sent = link.rounds.get(str(pending.round))
        if sent:  # out in Label Studio: annotations count once `label pull` stores them
            project = sent["project_id"]
            where = f"Label Studio project {project} ({project_address(link.url, project)})"
        print(
            f"{handoff.campaign}: round {pending.round} waiting for labels "
            f"({done} of {len(pending.sample_ids)} imported): {where}"
        )
        length = next(
            (r["rounds_asked"] for r in records if r["campaign"] == handoff.campaign), None
        )
        if length is not None and pending.round > length:
            print(
                f"  (past the {length} round(s) campaign {handoff.campaign} records: importing "
                f"its labels extends the campaign to {pending.round} rounds)"
            )
    if not records and not waiting:
        from baldflow.audit.hints import shell_command

        print(f"no campaigns yet: {shell_command('baldflow')} run --workspace {_quoted(ws_root)}")
    return 0


# ---------------------------------------------------------------------------- issue-6 commands
def _add_cycle_parsers(sub) -> None:
    """Human labeling, audit and scheduled cycles."""
    p = sub.add_parser(
        "label",
        help="people's labels: import a file, or pull them from Label Studio",
        description="With oracle `file`, a round hands its batch to people as "
        "data/<campaign>/to-label/round-NNNN.csv and stops; `label import` reads the labels "
        "back. With oracle `label-studio` the batch becomes tasks of the campaign's Label "
        "Studio project; `label pull` fetches the annotations.",
    )
    label_sub = p.add_subparsers(dest="label_command", metavar="ACTION")
    label_sub.required = True
    q = label_sub.add_parser(
        "import",
        help="import a label file for the pending batch",
        description="Check a label file against the batch waiting for labels and store its "
        "labels. Unknown or repeated sample ids, missing labels and labels that are not a "
        "class refuse the whole file (exit status 4). The import that completes the batch "
        "completes the round (DVC, git, MLflow).",
    )
    q.add_argument("file", metavar="FILE", help="CSV with sample_id and label columns")
    _workspace_arg(q)
    _campaign_arg(q, "the one with a batch waiting for labels")
    q.add_argument(
        "--partial",
        action="store_true",
        help="the file labels part of the batch; rows with an empty label are skipped",
    )
    q.add_argument(
        "--by",
        metavar="NAME",
        help="who labeled, for the ledger (default: $BALDFLOW_OPERATOR, the MLflow "
        "user of an authenticated tracking server, the workspace's git identity, else "
        "login@host)",
    )
    q.add_argument(
        "--no-complete",
        action="store_true",
        help="only store the labels; the next cycle or run completes the round",
    )
    q = label_sub.add_parser(
        "pull",
        help="fetch the pending batch's annotations from Label Studio",
        description="With oracle `label-studio`: check the annotations of the batch waiting "
        "for labels in the campaign's Label Studio project. Annotations outside the class "
        "list, edited or deleted tasks and (by default) disagreeing annotators refuse the "
        "pull with every problem listed (exit status 4), storing nothing. Once every sample "
        "has an annotation, the labels are stored and the round completes (DVC, git, MLflow).",
    )
    _workspace_arg(q)
    _campaign_arg(q, "the one with a batch waiting for labels")
    q.add_argument(
        "--resend",
        action="store_true",
        help="first send tasks deleted in Label Studio again (the whole batch to a new "
        "project if the project was deleted)",
    )
    q.add_argument(
        "--no-complete",
        action="store_true",
        help="only store the labels; the next cycle or run completes the round",
    )

    only_campaign = "the workspace's only campaign"
    p = sub.add_parser(
        "show",
        help="one round: its batch, class histogram, MLflow run, tag",
        description="One completed round: its batch with scores, selection probabilities and "
        "who labeled each sample, the class histogram, the git tag and commit, the labeled "
        "set's size and md5, and the MLflow run that chose the batch (status, metrics, and its "
        "page in the MLflow UI).",
    )
    _workspace_arg(p)
    _campaign_arg(p, only_campaign)
    p.add_argument(
        "--round", type=int, required=True, metavar="N", help="the round; 0 is the initial set"
    )
    p.add_argument(
        "--format", choices=["table", "json"], default="table", help="a table, or json with all"
    )

    p = sub.add_parser(
        "diff",
        help="what the labeled set gained between two rounds (via DVC)",
        description="The samples the labeled set gained from round N to a later round M, read "
        "through DVC at both round tags. Rounds only add labels: a sample removed or relabeled "
        "means the history was rewritten, and is reported as such.",
    )
    _workspace_arg(p)
    _campaign_arg(p, only_campaign)
    p.add_argument(
        "--from", dest="from_round", type=int, required=True, metavar="N", help="earlier round"
    )
    p.add_argument(
        "--to", dest="to_round", type=int, required=True, metavar="M", help="later round (M >= N)"
    )
    p.add_argument(
        "--format",
        choices=["table", "json", "csv"],
        default="table",
        help="a table; json, or csv for spreadsheets",
    )

    p = sub.add_parser(
        "report",
        help="a self-contained HTML report of a campaign",
        description="Write one HTML page about a campaign: the learning curve, the rounds, each "
        "round's acquisitions with a class histogram and (image data) thumbnails, and the full "
        "ledger. Images are embedded and nothing is loaded from elsewhere.",
    )
    _workspace_arg(p)
    _campaign_arg(p, only_campaign)
    p.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="HTML file to write (default: DIR/report-<campaign>.html)",
    )

    config_help = "parameter file (default: the workspace's params.yaml, else built-in defaults)"
    set_help = "override one parameter, e.g. --set campaign.rounds=30 (repeatable; default: none)"
    p = sub.add_parser(
        "cycle",
        help="run exactly one round of the workspace's campaign now",
        description="Run one round of the workspace's campaign from where it stands and stop: "
        "round 0 if it has none, else the next round (or the completion of a batch people "
        "labeled). Does nothing once campaign.rounds rounds are done.",
    )
    _workspace_arg(p)
    p.add_argument("--config", "-c", metavar="FILE", help=config_help)
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar=SET_METAVAR, help=set_help
    )
    p.add_argument(
        "--campaign",
        metavar="NAME",
        help="advance NAME with its recorded parameters (default: the campaign that "
        "campaign.name names)",
    )

    # `schedule` was `serve`, one letter from `server`: the old name stays for a release as a
    # hidden alias (a parser without `help` is not listed in `baldflow --help`).
    for name in ("schedule", *HIDDEN_ALIASES):
        described = (
            {"help": "run a cycle on a schedule, in this process (needs `baldflow server`)"}
            if name not in HIDDEN_ALIASES
            else {}
        )
        p = sub.add_parser(
            name,
            description="Run a cycle of the campaign on a schedule through a persistent "
            "Prefect server (start one with `baldflow server` and export PREFECT_API_URL). "
            "Keeps running; Ctrl-C stops it and pauses the schedule.",
            **described,
        )
        _workspace_arg(p)
        when = p.add_mutually_exclusive_group(required=True)
        when.add_argument("--cron", metavar="EXPR", help="cron schedule, e.g. '0 * * * *' (hourly)")
        when.add_argument("--interval", type=float, metavar="SECONDS", help="run every SECONDS")
        p.add_argument("--config", "-c", metavar="FILE", help=config_help)
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar=SET_METAVAR,
            help=set_help,
        )
        p.add_argument(
            "--campaign",
            metavar="NAME",
            help="cycle NAME with its recorded parameters (default: the campaign that "
            "campaign.name names)",
        )

    p = sub.add_parser(
        "deploy",
        help="register the cycle on a shared Prefect server's work pool, for workers to run",
        description="Create or update a deployment of the cycle (one round per run) on the "
        "Prefect server of PREFECT_API_URL, in work pool POOL (created as a process pool if "
        "missing), with a schedule. Unlike `schedule`, nothing keeps running here: `prefect "
        "worker start --pool POOL`, on any machine with baldflow installed and the workspace "
        "at the same path, runs the cycles. One cycle runs at a time: a run triggered while "
        "another runs is cancelled.",
    )
    _workspace_arg(p)
    p.add_argument("--campaign", required=True, metavar="NAME", help="the campaign to cycle")
    p.add_argument("--pool", required=True, metavar="POOL", help="work pool of the workers")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help="cron schedule, e.g. '0 * * * *' (hourly)")
    when.add_argument("--interval", type=float, metavar="SECONDS", help="run every SECONDS")
    p.add_argument("--config", "-c", metavar="FILE", help=config_help)
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar=SET_METAVAR, help=set_help
    )
    p.add_argument(
        "--work-queue", metavar="QUEUE", help="queue of the pool (default: the pool's default)"
    )
    p.add_argument("--name", metavar="NAME", help="deployment name (default: <campaign>-cycle)")

    p = sub.add_parser(
        "server",
        help="start a persistent Prefect server on 127.0.0.1",
        description="Start `prefect server start` on 127.0.0.1 with its database in the "
        "workspace's .prefect/, so its UI also lists the runs of temporary servers, and "
        "telemetry off. `baldflow schedule` needs it. Keeps running until Ctrl-C.",
    )
    _workspace_arg(p)
    p.add_argument("--port", type=int, default=4200, help="port to listen on")


def _ws_root(args: argparse.Namespace) -> Path:
    return Path(args.workspace or _default_workspace()).resolve()


def _prepare_prefect(ws_root: Path) -> None:
    from baldflow.workspace import offline_environment

    offline_environment(ws_root)
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "WARNING")


def _start_prefect_api(ws_root: Path) -> None:
    """The configured Prefect API, else a temporary server of ours for this command.

    Call after _prepare_prefect and before anything imports prefect. The server runs in its
    own session, so a Ctrl-C cannot kill it under the run while the run still records how it
    ended, and it is stopped by PID however the command ends (see baldflow.stack). If it dies
    anyway, the command stops within seconds with one line instead of retrying it for minutes.
    """
    from baldflow.stack.interrupts import active
    from baldflow.stack.prefect_server import use_prefect_api

    server = use_prefect_api(os.environ.get("PREFECT_HOME") or ws_root / ".prefect")
    if server is None:
        return
    print(
        f"baldflow: temporary Prefect server on {server.url} "
        f"(ready in {server.startup_seconds:.1f} s)",
        flush=True,
    )
    handler = active()
    if handler is not None:
        server.watch(
            lambda status: handler.abort(
                f"the temporary Prefect server on {server.url} stopped unexpectedly (exit "
                f"status {status}; its log: {server.log_path})"
            )
        )


def _say_where_on_interrupt(ws_root: Path, campaign: str, rounds: int) -> None:
    """Make a Ctrl-C, SIGTERM or a dead server end with one line on where the campaign stands."""
    from baldflow.stack.interrupts import active

    handler = active()
    if handler is not None:
        handler.describe = lambda: _where_campaign_stands(ws_root, campaign, rounds)


def _where_campaign_stands(ws_root: Path, campaign: str, rounds: int) -> str:
    from baldflow.workspace import Workspace

    # The tags are what the next run resumes from (it also repairs whatever the stop left).
    last = Workspace(ws_root).last_round(campaign)
    if last is None:
        return f"campaign {campaign!r} stopped during round 0; no round is completed yet"
    if last >= rounds:
        return f"campaign {campaign!r} stopped; all its {rounds} rounds are completed"
    return (
        f"campaign {campaign!r} stopped during round {last + 1}; round {last} is the last "
        "completed; run again to resume"
    )


def _nothing_to_do(ws_root: Path, config):
    """The campaign of `config` when a run or cycle would have nothing to do (a Finished of
    baldflow.workspace.finished), else None: every round done, or its next batch out with
    people who have not labeled all of it yet. Read from the workspace in about a second."""
    from baldflow.config import ConfigError, validate
    from baldflow.labeling import HandOff, OracleError
    from baldflow.workspace import Workspace
    from baldflow.workspace.finished import finished_campaign
    from baldflow.workspace.remote import remote_url

    if not Workspace.is_workspace(ws_root):
        return None
    ws = Workspace(ws_root)
    name = config.campaign.name
    handoff = HandOff(ws.campaign_dir(name), name)
    try:
        pending = handoff.pending()
    except OracleError:
        return None  # more than one batch out: the flow says what is wrong
    if pending is None:
        return finished_campaign(ws_root, config)
    try:
        same = validate(dict(pending.params), check_names=False).identity() == config.identity()
    except ConfigError:
        same = False
    missing = (
        same
        # Label Studio: a run pulls what people annotated, which is work to do.
        and config.oracle.kind == "file"
        and not handoff.is_complete(pending)
        # Shared: another clone may have completed the round; a run syncs first.
        and remote_url(ws) is None
    )
    return finished_campaign(ws_root, config, batch_round=pending.round, labels_missing=missing)


def _say_batch_beyond(ws_root: Path, campaign: str, finished) -> None:
    """A batch out for a round past the campaign's length waits for a run that asks for it."""
    if finished.beyond is None:
        return
    from baldflow.audit.hints import shell_command

    print(
        f"baldflow: a batch for round {finished.beyond} is out for labels, past the campaign's "
        f"length; `label import` of its labels extends the campaign to complete it, as does "
        f"{shell_command('baldflow')} run --workspace {_quoted(ws_root)} --campaign {campaign} "
        f"--set campaign.rounds={finished.beyond}"
    )


def _finished_result(ws_root: Path, finished, experiment: str) -> dict:
    """The result record of a campaign with nothing to do as the run summary reads it, from
    the workspace."""
    result = {
        "campaign": finished.campaign,
        "workspace": str(ws_root),
        "stopped": "rounds",
        "last_round": finished.last_round,
        "rounds": finished.rounds,
        "timings": [],
        "tracking_uri": finished.tracking_uri,
        "experiment": experiment,
    }
    if finished.waiting is not None:
        from baldflow.labeling import HandOff
        from baldflow.workspace import Workspace

        handoff = HandOff(Workspace(ws_root).campaign_dir(finished.campaign), finished.campaign)
        pending = handoff.pending()
        result["stopped"] = "waiting-for-labels"
        result["waiting_for_labels"] = {
            "round": pending.round,
            "sheet": str(handoff.sheet_path(pending.round)),
            "batch_size": len(pending.sample_ids),
            "studio": None,
        }
    return result


def cmd_label(args: argparse.Namespace) -> int:
    from baldflow.labeling import NoPendingBatchError, import_labels, pending_batches
    from baldflow.workspace import Workspace, remote, workspace_lock

    ws_root = _ws_root(args)
    batches = pending_batches(ws_root)
    if args.campaign is not None:
        batches = [(h, p) for h, p in batches if h.campaign == args.campaign]
    if not batches:
        which = f"campaign {args.campaign!r}" if args.campaign else "any campaign"
        raise NoPendingBatchError(f"no batch of {which} is waiting for labels in {ws_root}")
    if len(batches) > 1:
        names = ", ".join(h.campaign for h, _ in batches)
        raise NoPendingBatchError(f"batches of {names} are waiting for labels: pass --campaign")
    handoff, pending = batches[0]
    with workspace_lock(ws_root):
        if args.label_command == "pull":
            complete = _pull_labels(ws_root, handoff, pending, resend=args.resend)
        else:
            # The operator: $BALDFLOW_OPERATOR, the authenticated MLflow user of a tracking
            # server, the clone's git identity, else login@host (baldflow.workspace.remote).
            tracking_uri = ((pending.params.get("tracking") or {}).get("mlflow_uri")) or None
            by = args.by or remote.operator(Workspace(ws_root), tracking_uri)
            result = import_labels(handoff, args.file, partial=args.partial, labeled_by=by)
            print(
                f"imported {result.added} label(s) for round {result.round} of "
                f"{handoff.campaign}: {result.labeled} of {result.batch_size} labeled"
            )
            complete = result.complete
            if not complete:
                print("the round completes once the whole batch is labeled (import more files)")
        if not complete:
            return 0
        if args.no_complete:
            print("batch complete; the next `baldflow cycle`, scheduled cycle or run completes it")
            return 0
        _prepare_prefect(ws_root)
        rounds = (pending.params.get("campaign") or {}).get("rounds")
        if rounds is not None:
            _say_where_on_interrupt(ws_root, handoff.campaign, int(rounds))
        print("batch complete; completing the round (version, track)...", flush=True)
        _start_prefect_api(ws_root)
        from baldflow.flows.cycle import cycle_flow

        outcome = cycle_flow(workspace=str(ws_root), params=pending.params)
    if outcome.get("stopped") == "workspace-busy":
        # Another clone of a shared workspace holds its round slot (see flows/slots.py).
        why = outcome.get("message") or "the workspace is busy"
        print(
            f"the labels are stored; the round is not completed yet ({why}): the next "
            "`baldflow cycle`, scheduled cycle or run completes it"
        )
        return EXIT_LOCKED
    print(f"round {outcome['last_round']} of {outcome['campaign']} committed")
    _print_waiting(outcome)
    if outcome.get("waiting_for_labels") is None:
        _say_what_next(ws_root, outcome)
    return 0


def _say_what_next(ws_root: Path, outcome: dict) -> None:
    """After `label import` or `label pull` completed a round: the command that produces the
    next batch, or that the campaign is over."""
    from baldflow.audit.hints import shell_command

    name = outcome["campaign"]
    if outcome.get("stopped") == "pool-empty":
        print(f"campaign {name} is complete: the pool is empty")
    elif outcome.get("stopped") == "rounds":
        print(
            f"campaign {name} is complete: all {outcome['last_round']} rounds are done (to go "
            f"on: {shell_command('baldflow')} run --workspace {_quoted(ws_root)} --campaign "
            f"{name} --set campaign.rounds=N)"
        )
    else:
        print(
            f"next batch: {shell_command('baldflow')} run --workspace {_quoted(ws_root)} "
            f"--campaign {name}"
        )


def _pull_labels(ws_root: Path, handoff: object, pending: object, *, resend: bool) -> bool:
    """`label pull`: fetch the pending batch's annotations from Label Studio; whether the
    batch is complete (its labels then stored in the hand-off folder)."""
    from baldflow.config import ConfigError, validate
    from baldflow.labeling.label_studio import client_for
    from baldflow.labeling.studio_rounds import pull_annotations, send_batch
    from baldflow.workspace import Workspace

    # The batch's own parameters: where its server is and how disagreements are settled.
    config = validate(dict(pending.params))
    if config.oracle.kind != "label-studio":
        raise ConfigError(
            f"campaign {handoff.campaign!r} hands its batches out as files (oracle.kind "
            f"{config.oracle.kind!r}): use `baldflow label import`"
        )
    client = client_for(config.oracle.label_studio, ws_root)
    if resend:
        with Workspace(ws_root) as ws:
            workspace_id = ws.workspace_id
        sent = send_batch(
            client, handoff, pending, workspace_id=workspace_id, images=None, resend=True
        )
        print(f"sent {sent.imported} task(s) again to Label Studio project {sent.project_id}")
    pulled = pull_annotations(
        client, handoff, pending, conflicts=config.oracle.label_studio.conflicts
    )
    print(
        f"round {pulled.round} of {handoff.campaign}: {pulled.annotated} of "
        f"{pulled.batch_size} annotated in Label Studio project {pulled.project_id} "
        f"({client.project_address(pulled.project_id)})"
    )
    for decision in pulled.decisions:
        print(f"  {decision}")
    if not pulled.complete:
        print("the round completes once every task has an annotation (pull again then)")
    return pulled.complete


def _print_waiting(result: dict) -> None:
    waiting = result.get("waiting_for_labels")
    if not waiting:
        return
    print(f"Waiting for labels: round {waiting['round']} ({waiting['batch_size']} samples).")
    if waiting.get("studio"):
        print(f"  label its tasks in Label Studio: {waiting['studio']}")
        print(f"  then: baldflow label pull --workspace {_quoted(result['workspace'])}")
        return
    print(f"  fill in the label column of {waiting['sheet']}")
    from baldflow.audit.hints import shell_command

    print(
        f"  then: {shell_command('baldflow')} label import {_quoted(waiting['sheet'])} "
        f"--workspace {_quoted(result['workspace'])}"
    )


def cmd_cycle(args: argparse.Namespace) -> int:
    ws_root = _ws_root(args)
    # Before anything imports prefect: it reads its settings once, at import.
    _prepare_prefect(ws_root)
    # What flows.cycle.load_cycle_config reads (--config, else the workspace's params.yaml),
    # without importing the flow: prefect must not be imported before its API is chosen.
    config = _resolve_config(args, ws_root)
    from baldflow.preflight import check as preflight  # one-line errors before any server

    preflight(config, ws_root)
    from baldflow.config import dump_yaml
    from baldflow.workspace import Workspace, WorkspaceLockedError, workspace_lock

    _say_where_on_interrupt(ws_root, config.campaign.name, config.campaign.rounds)
    ws_root.mkdir(parents=True, exist_ok=True)
    # Nothing to do is answered from the workspace: no server started, no flow run recorded.
    # A busy workspace goes on to the flow, which records the skipped trigger as before.
    finished = None
    try:
        with workspace_lock(ws_root):
            if not Workspace.is_ready(ws_root):
                Workspace.init(ws_root, params_text=dump_yaml(config)).close()
            finished = _nothing_to_do(ws_root, config)
    except WorkspaceLockedError:
        pass
    if finished is not None:
        said = (
            f"all {finished.last_round} rounds were done already"
            if finished.waiting is None
            else f"waiting for labels for round {finished.waiting}"
        )
        print(
            f"campaign {finished.campaign}: {_last_completed(finished.last_round)} ({said}; "
            "nothing was run or recorded)"
        )
        _say_batch_beyond(ws_root, finished.campaign, finished)
        _print_waiting(_finished_result(ws_root, finished, config.tracking.experiment))
        return 0
    _start_prefect_api(ws_root)
    from baldflow.flows.cycle import cycle_flow

    result = cycle_flow(workspace=str(ws_root), params=config.to_dict())
    if result.get("stopped") == "workspace-busy":
        print(f"skipped: {ws_root} is busy with another round")
        return EXIT_LOCKED
    outcome = {
        "round-limit": "one round done",
        "rounds": (
            f"one round done: all {result.get('last_round')} rounds are done now"
            if result.get("timings")
            else f"all {result.get('last_round')} rounds were done already"
        ),
        "pool-empty": "the pool is empty",
        "waiting-for-labels": "waiting for labels",
    }.get(result["stopped"], result["stopped"])
    print(f"campaign {result['campaign']}: {_last_completed(result['last_round'])} ({outcome})")
    _print_waiting(result)
    return 0


def _last_completed(last_round: int | None) -> str:
    """The campaign's progress in words; before round 0 is committed there is no round yet."""
    if last_round is None:
        return "no round completed yet"
    return f"last completed round {last_round}"


def cmd_serve(args: argparse.Namespace) -> int:
    ws_root = _ws_root(args)
    # Before anything imports prefect: it reads its settings once, at import.
    _prepare_prefect(ws_root)
    from baldflow.flows.cycle import load_cycle_config

    overrides = args.overrides
    if args.campaign is not None:
        from baldflow.flows.deploy import cycle_overrides

        overrides = cycle_overrides(args.campaign, overrides)  # refuses a contradicting --set
    config = load_cycle_config(ws_root, args.config, overrides, args.campaign)
    if not os.environ.get("PREFECT_API_URL"):
        raise LookupError(
            f"baldflow {args.command} needs a persistent Prefect server (a temporary one cannot "
            "schedule): start one with `baldflow server` and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    if args.interval is not None and args.interval <= 0:
        from baldflow.config import ConfigError

        raise ConfigError(f"--interval must be > 0 seconds, got {args.interval}")
    from baldflow.preflight import check as preflight  # before the schedule, not at its first run

    preflight(config, ws_root)
    from baldflow.workspace import Workspace, workspace_lock

    ws_root.mkdir(parents=True, exist_ok=True)
    with workspace_lock(ws_root):
        if not Workspace.is_ready(ws_root):
            from baldflow.config import dump_yaml

            Workspace.init(ws_root, params_text=dump_yaml(config)).close()
    from baldflow.flows.serve import serve_cycle

    serve_cycle(
        ws_root,
        config.campaign.name,
        cron=args.cron,
        interval=args.interval,
        config=args.config,
        overrides=args.overrides,
        resume=args.campaign is not None,
    )
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    ws_root = _ws_root(args)
    # Telemetry off before prefect is imported, but PREFECT_HOME left alone: a team's server
    # is often configured in the user's Prefect profile, which lives in their PREFECT_HOME.
    from baldflow.workspace import offline_environment

    offline_environment()
    if args.interval is not None and args.interval <= 0:
        from baldflow.config import ConfigError

        raise ConfigError(f"--interval must be > 0 seconds, got {args.interval}")
    from baldflow.flows.deploy import (
        check_name_free,
        cycle_overrides,
        deploy_cycle,
        deployment_name,
        persistent_api_url,
    )

    # Refusals first, before anything is created.
    api_url = persistent_api_url()
    check_name_free(ws_root, args.name or deployment_name(args.campaign))
    from baldflow.flows.cycle import load_cycle_config
    from baldflow.preflight import check as preflight

    # What every run will load (params.yaml or --config, then --set, then the campaign's
    # name), checked now rather than at the first scheduled run, on a worker, unattended.
    config = load_cycle_config(
        ws_root, args.config, cycle_overrides(args.campaign, args.overrides), args.campaign
    )
    preflight(config, ws_root)
    from baldflow.workspace import Workspace, workspace_lock

    ws_root.mkdir(parents=True, exist_ok=True)
    with workspace_lock(ws_root):
        if not Workspace.is_ready(ws_root):
            from baldflow.config import dump_yaml

            Workspace.init(ws_root, params_text=dump_yaml(config)).close()
    deployment = deploy_cycle(
        ws_root,
        args.campaign,
        pool=args.pool,
        cron=args.cron,
        interval=args.interval,
        config=args.config,
        overrides=args.overrides,
        work_queue=args.work_queue,
        name=args.name,
    )
    when = f"cron {args.cron!r}" if args.cron else f"every {args.interval:g} s"
    created = ", created now" if deployment.pool_created else ""
    pool = f"{deployment.pool} ({deployment.pool_type}{created})"
    print(f"deployment {deployment.full_name} on {api_url}")
    print(f"  one round of campaign {args.campaign} in {ws_root} per run, {when}")
    print(f"  work pool: {pool}; one run at a time (a run due while one runs is cancelled)")
    print("run the cycles with a worker, where baldflow is installed and the workspace is at")
    print(f"the same path (PREFECT_API_URL={api_url} in its environment):")
    print(f"  {deployment.worker_command()}")
    print(f"a cycle now: prefect deployment run {_quoted(deployment.full_name)}")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    import time

    from baldflow.stack.interrupts import active
    from baldflow.stack.prefect_server import PrefectServer
    from baldflow.workspace import offline_environment

    ws_root = _ws_root(args)
    ws_root.mkdir(parents=True, exist_ok=True)
    # The workspace's Prefect home: the UI then also shows runs of the temporary servers.
    offline_environment(ws_root)
    # Its output stays on this terminal, as `prefect server start`'s would. It runs in its own
    # session: Ctrl-C and SIGTERM reach baldflow, which stops it by PID (PrefectServer also
    # points its UI at this port: Prefect's default is 4200 whatever --port says).
    server = PrefectServer(
        os.environ["PREFECT_HOME"], port=args.port, startup_timeout=300, log_to_file=False
    )
    url = server.url
    handler = active()
    if handler is not None:
        handler.describe = lambda: f"Prefect server on {url} stopped"
    try:
        server.start()
        print(f"Prefect server for {ws_root} on {url} (UI: {url}, API: {url}/api)")
        print(f"in another shell: export PREFECT_API_URL={url}/api", flush=True)
        while server.running():
            time.sleep(0.5)
    finally:
        status = server.stop()
    print(f"baldflow: the Prefect server on {url} exited by itself (status {status})")
    return EXIT_ERROR


def cmd_show(args: argparse.Namespace) -> int:
    from baldflow.audit import queries as audit

    record = audit.show_round(_ws_root(args), args.round, args.campaign)
    if args.format == "json":
        import json

        print(json.dumps(record, indent=2))
        return 0
    from baldflow.audit.report import print_round

    print_round(record)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from baldflow.audit import queries as audit

    record = audit.diff_rounds(_ws_root(args), args.from_round, args.to_round, args.campaign)
    if args.format == "json":
        import json

        print(json.dumps(record, indent=2))
    elif args.format == "csv":
        import csv

        from baldflow.common import spreadsheet_safe

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["change", "sample_id", "label", "round"])
        # Ids are the only text cells: neutralised for spreadsheets (labels, rounds are numbers).
        for row in record["added"]:
            writer.writerow(
                ["added", spreadsheet_safe(row["sample_id"]), row["label"], row["round"]]
            )
        for row in record["removed"]:
            writer.writerow(
                ["removed", spreadsheet_safe(row["sample_id"]), row["label"], row["round"]]
            )
    else:
        from baldflow.audit.report import print_diff

        print_diff(record)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from baldflow.audit.report import write_report

    path = write_report(_ws_root(args), args.campaign, args.output)
    print(f"report written: {path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from baldflow.workspace import Workspace, workspace_lock
    from baldflow.workspace.consistency import check_workspace

    ws_root = _ws_root(args)
    if not Workspace.is_workspace(ws_root):
        raise FileNotFoundError(f"{ws_root} is not a baldflow workspace (run `baldflow init`)")
    uri, experiment = args.tracking_uri, args.experiment
    if uri is None or experiment is None:
        from baldflow.config import load_config

        params = ws_root / "params.yaml"
        tracking = load_config(params if params.exists() else None, check_names=False).tracking
        uri = uri or tracking.mlflow_uri
        experiment = experiment or tracking.experiment
    # A run writing to the workspace breaks the rules mid-round: judge it only at rest.
    with workspace_lock(ws_root):
        found = check_workspace(
            ws_root,
            [args.campaign] if args.campaign else None,
            tracking_uri=uri,
            experiment=experiment,
        )
    if not found:
        print(f"no campaigns in {ws_root}")
        return 0
    bad = 0
    for name, problems in found.items():
        if not problems:
            print(f"{name}: consistent")
            continue
        bad += 1
        print(f"{name}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  - {problem}")
    return EXIT_ERROR if bad else 0


def _add_stack_parser(sub) -> None:
    p = sub.add_parser(
        "stack",
        help="start, check or stop the team servers (PostgreSQL, MLflow, Prefect, remotes)",
        description="The team's servers from one directory: a private PostgreSQL on "
        "127.0.0.1, an MLflow tracking server on it (proxied artifacts, optional basic auth), "
        "a Prefect server on it, a bare git repository and a DVC remote. `up` writes "
        "DIR/team.env for team members to source.",
    )
    actions = p.add_subparsers(dest="stack_command", metavar="ACTION")
    actions.required = True
    up = actions.add_parser(
        "up",
        help="start whatever part is not running (again on the recorded ports)",
        description="Start the stack in DIR (creating it the first time); parts that run "
        "already are kept. The servers keep running after this command ends.",
    )
    status = actions.add_parser(
        "status", help="health of each part (exit 1 if any is down)", description="Check "
        "each part: PostgreSQL login, MLflow /health, Prefect /api/health, the remotes."
    )
    down = actions.add_parser(
        "down", help="stop the servers (data stays)", description="Stop the servers of the "
        "stack in DIR by their recorded PIDs; its data, remotes and secrets stay."
    )
    for q in (up, status, down):
        q.add_argument("--dir", required=True, metavar="STACK", help="the stack's directory")
    for name in ("postgres", "mlflow", "prefect"):
        up.add_argument(
            f"--{name}-port", type=int, metavar="PORT",
            help=f"port of the {name} server (default: the recorded one, else a free one)",
        )
    up.add_argument(
        "--auth", action=argparse.BooleanOptionalAction, default=None,
        help="MLflow behind basic auth, or not (default: as the stack was, else no auth)",
    )
    up.add_argument(
        "--artifacts-destination", metavar="DIR_OR_URI",
        help="where MLflow stores artifacts (default: STACK/mlflow-artifacts)",
    )


def cmd_stack(args: argparse.Namespace) -> int:
    from baldflow.stack import team

    def say(line: str) -> None:
        print(line, flush=True)

    if args.stack_command == "up":
        stack = team.stack_up(
            args.dir,
            postgres_port=args.postgres_port,
            mlflow_port=args.mlflow_port,
            prefect_port=args.prefect_port,
            auth=args.auth,
            artifacts_destination=args.artifacts_destination,
            report=say,
        )
        print(f"stack in {stack.dir} is {'already ' if stack.already_up else ''}up:")
        for key, value in stack.environment().items():
            print(f"  {key}={value}")
        if stack.auth:
            print(f"  MLflow admin: {stack.admin_username}, password in "
                  f"{stack.admin_password_file}")
        print(f"team members: . {stack.env_file}")
        return 0
    if args.stack_command == "status":
        rows = team.stack_status(args.dir)
        for part, ok, detail in rows:
            print(f"{part:<9} {'ok' if ok else 'DOWN':<5} {detail}")
        return 0 if all(ok for _, ok, _ in rows) else EXIT_ERROR
    team.stack_down(args.dir, report=say)
    print(f"stack in {Path(args.dir).absolute()} is down")
    return 0


def _add_label_studio_parser(sub) -> None:
    p = sub.add_parser(
        "label-studio",
        help="start, check or stop a Label Studio server for a workspace",
        description="A Label Studio server for oracle `label-studio`, from its own virtual "
        "environment (built on first use), on 127.0.0.1, with its data in DIR (default: "
        "<workspace>/label-studio). `up` leaves it running; `down` stops it by its PID.",
    )
    actions = p.add_subparsers(dest="studio_command", metavar="ACTION")
    actions.required = True
    for name, text in (
        ("up", "start it (or find it running) and print how to log in and invite labelers"),
        ("status", "whether it runs and answers (exit 1 if not)"),
        ("down", "stop it (data stays)"),
    ):
        q = actions.add_parser(name, help=text, description=text)
        _workspace_arg(q)
        q.add_argument("--dir", metavar="DIR", help="the server's folder (default: "
                       "<workspace>/label-studio)")  # fmt: skip
        if name == "up":
            q.add_argument("--port", type=int, metavar="PORT", help="default: the recorded one, "
                           "else a free one")  # fmt: skip


def _studio_home(args: argparse.Namespace) -> Path:
    from baldflow.labeling.label_studio import LOCAL_SERVER_DIR

    if args.dir:
        return Path(args.dir).absolute()
    return _ws_root(args) / LOCAL_SERVER_DIR


def cmd_label_studio(args: argparse.Namespace) -> int:
    from baldflow.stack import label_studio as studio

    home = _studio_home(args)
    if args.studio_command == "status":
        ok, line = studio.label_studio_status(home)
        print(line)
        return 0 if ok else EXIT_ERROR
    if args.studio_command == "down":
        stopped = studio.label_studio_down(home)
        print(f"Label Studio for {home} {'stopped' if stopped else 'was not running'}")
        return 0
    server, already = studio.label_studio_up(home, args.port, report=print)
    _exclude_from_git(home)
    from baldflow.labeling.label_studio import Connection, LabelStudioClient

    invite = LabelStudioClient(Connection(server.url, server.token, None)).invite_url()
    print(f"Label Studio is {'already ' if already else ''}up at {server.url} (data in {home})")
    print(f"  log in as {server.username}; password and API token in {home / 'credentials.json'}")
    print(f"  labelers sign up with: {invite}")
    print("  campaigns of this workspace use it with oracle.kind: label-studio "
          "(oracle.label_studio.url: null)")  # fmt: skip
    return 0


def _add_pool_parser(sub) -> None:
    p = sub.add_parser(
        "pool",
        help="describe a pool on disk, or convert one into a pool directory",
        description="Pools for data.source: disk. PATH is a pool directory, an image folder "
        "(PATH/<class>/<image>) or an uncompressed .npz; `info` describes it, `convert` writes "
        "it as a pool directory (read as raw arrays: faster rounds than decoding images).",
    )
    actions = p.add_subparsers(dest="pool_command", metavar="ACTION")
    actions.required = True
    info = actions.add_parser("info", help="rows, shape, format, classes and label counts",
                              description="Describe the pool at PATH.")  # fmt: skip
    info.add_argument("path", metavar="PATH", help="a pool directory, image folder or .npz")
    info.add_argument("--manifest", action="store_true",
                      help="also hash its content (what each round's commit versions)")  # fmt: skip
    convert = actions.add_parser(
        "convert", help="write PATH as a new pool directory OUT",
        description="Copy the rows, labels, ids and class names of PATH into a new pool "
        "directory OUT, a chunk at a time (ids checked first; OUT must be new or empty).",
    )  # fmt: skip
    convert.add_argument("path", metavar="PATH", help="a pool directory, image folder or .npz")
    convert.add_argument("out", metavar="OUT", help="the new pool directory (new or empty)")


def cmd_pool(args: argparse.Namespace) -> int:
    from baldflow.common import printable
    from baldflow.data.ondisk import DiskPoolError, manifest, open_pool

    try:
        if args.pool_command == "convert":
            return _convert_pool(args)
        pool = open_pool(args.path)
        shape = list(pool.sample_shape)
        print(f"{args.path}: {type(pool).__name__}, {len(pool):,} rows of {shape} "
              f"{pool.dtype.name} (scale {pool.scale:g})")  # fmt: skip
        names = pool.class_names or []
        print(f"  classes ({len(names)}): " + ", ".join(printable(n) for n in names[:20])
              + (", ..." if len(names) > 20 else ""))  # fmt: skip
        counts: dict[int, int] = {}
        for start in range(0, len(pool), 1 << 20):  # streamed: flat memory for any pool
            values, found = pool.labels(start, min(len(pool), start + (1 << 20))).unique(
                return_counts=True
            )
            for value, count in zip(values.tolist(), found.tolist(), strict=True):
                counts[value] = counts.get(value, 0) + count
        unknown = counts.pop(-1, 0)
        shown = ", ".join(
            f"{printable(names[k]) if 0 <= k < len(names) else k}: {c:,}"
            for k, c in sorted(counts.items())
        )
        print(f"  labels: {shown or 'none'}; unknown (-1): {unknown:,}")
        if len(pool):
            print(f"  first id: {printable(pool.ids(0, 1)[0])}")
        if args.manifest:
            print(f"  content sha256: {manifest(pool)['sha256']}")
        return 0
    except DiskPoolError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_ERROR


def _convert_pool(args: argparse.Namespace) -> int:
    import time

    from baldflow.data.convert import convert_pool

    began = time.perf_counter()
    last = [began]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= 2 or done == total:  # a line every 2 s, not one per chunk
            last[0] = now
            print(f"  {done:,} / {total:,} rows ({done / max(now - began, 1e-9):,.0f} rows/s)",
                  flush=True)  # fmt: skip

    pool = convert_pool(args.path, args.out, progress=progress)
    print(f"wrote {len(pool):,} rows to {args.out} in {time.perf_counter() - began:.1f} s; use "
          f"it as data.root/<pool|val|test>")  # fmt: skip
    return 0


def _exclude_from_git(home: Path) -> None:
    """Keep a server folder inside a workspace out of git, also in workspaces made before
    their .gitignore listed it (.git/info/exclude: local, so git status stays clean)."""
    root = home.parent
    exclude = root / ".git" / "info" / "exclude"
    if not (root / ".git").is_dir():
        return
    line = f"/{home.name}/"
    existing = exclude.read_text() if exclude.exists() else ""
    if line not in existing.split():
        exclude.parent.mkdir(parents=True, exist_ok=True)
        sep = "\n" if existing and not existing.endswith("\n") else ""
        exclude.write_text(existing + sep + line + "\n")


COMMANDS = {
    "init": cmd_init,
    "run": cmd_run,
    "history": cmd_history,
    "status": cmd_status,
    "label": cmd_label,
    "show": cmd_show,
    "diff": cmd_diff,
    "report": cmd_report,
    "cycle": cmd_cycle,
    "schedule": cmd_serve,
    "serve": cmd_serve,  # the old name of `schedule`, hidden (HIDDEN_ALIASES)
    "deploy": cmd_deploy,
    "server": cmd_server,
    "verify": cmd_verify,
    "stack": cmd_stack,
    "label-studio": cmd_label_studio,
    "pool": cmd_pool,
}


def report_error(exc: BaseException) -> int | None:
    """The one place that turns an error into a message on stderr and an exit code.

    Exit codes: 0 done; 1 (EXIT_ERROR) no such workspace, campaign or file, or `verify` found
    problems; 2 (EXIT_CONFIG) a parameter is wrong or contradicts the campaign's record;
    3 (EXIT_LOCKED) another run holds the workspace; 4 (EXIT_LABELS) a label file was refused;
    5 (EXIT_PREFLIGHT) this machine lacks what the campaign needs (data files, the device,
    a reachable tracking server). None for an error that is not the user's to fix (a bug):
    the caller re-raises it.
    """
    from baldflow.config import ConfigError
    from baldflow.labeling import LabelImportError
    from baldflow.labeling.label_studio import LabelStudioError
    from baldflow.preflight import PreflightError
    from baldflow.workspace import WorkspaceError
    from baldflow.workspace.lock import WorkspaceLockedError

    if isinstance(exc, ConfigError):
        code = EXIT_CONFIG
    elif isinstance(exc, (PreflightError, LabelStudioError)):
        # Label Studio unreachable, or refusing the token: what the campaign needs is missing.
        code = EXIT_PREFLIGHT
    elif isinstance(exc, WorkspaceLockedError):
        code = EXIT_LOCKED
    elif isinstance(exc, LabelImportError):
        code = EXIT_LABELS
    elif isinstance(exc, (FileNotFoundError, LookupError, WorkspaceError)):
        code = EXIT_ERROR
    else:
        return None
    message = str(exc)
    if isinstance(exc, (ConfigError, PreflightError)):
        # One line, also when it quotes a multi-line message (YAML's parse errors): scripts
        # and people read the problem and its fix from a single line. Label errors keep their
        # lines, one per refused row.
        message = " ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"{type(exc).__name__}: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    import contextlib

    from baldflow.stack import ProcessStartError
    from baldflow.stack.interrupts import InterruptHandler

    args = build_parser().parse_args(argv)
    # Ctrl-C, SIGTERM, SIGHUP: one line on where things stand, exit 128+signal, servers stopped
    # (baldflow.stack.interrupts). `schedule` leaves them to Prefect's runner, which pauses its
    # schedule on them.
    handler = InterruptHandler() if args.command not in SCHEDULE_COMMANDS else None
    try:
        with handler if handler is not None else contextlib.nullcontext():
            try:
                code = COMMANDS[args.command](args)
                sys.stdout.flush()  # a reader that went away shows here, not at exit
                return code
            except BrokenPipeError:
                raise
            except ProcessStartError as exc:
                print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
                return EXIT_ERROR
            except Exception as exc:
                code = report_error(exc)
                if code is None:
                    raise
                return code
    except KeyboardInterrupt:
        if handler is None:
            print("baldflow: interrupted", file=sys.stderr)
            return 130
        return handler.report()
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """The reader of stdout went away (`baldflow diff ... | head`): end quietly, as Unix tools
    do, with the status of a process ended by SIGPIPE."""
    import contextlib

    # Python's recipe: stdout onto /dev/null, so the interpreter's last flush raises nothing.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 128 + 13  # SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
