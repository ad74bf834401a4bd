"""`init`, `run`, `cycle` and `status`: make a workspace, run or advance a campaign, list
the campaigns."""

from __future__ import annotations

import argparse
import sys

from baldflow import app
from baldflow.cli.common import (
    DEFAULT_WORKSPACE,
    EXIT_CONFIG,
    EXIT_LOCKED,
    config_args,
    run_request,
    workspace_arg,
    ws_root,
)
from baldflow.cli.output import (
    baldflow_command,
    last_completed,
    print_json,
    print_run_summary,
    print_waiting,
    quoted,
    say,
    say_batch_beyond,
)


# ---------------------------------------------------------------------------- parsers
def add_init(sub) -> None:
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


def add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run or resume a campaign",
        description="Run the campaign the parameters describe, or resume it at its last "
        "completed round. Prints a line per round, then a table of the rounds and the commands "
        "that show the results. Makes the workspace first if it is not one yet.",
    )
    workspace_arg(p)
    config_args(p, "acquisition.batch_size=20")
    p.add_argument(
        "--campaign",
        metavar="NAME",
        help="resume NAME with its recorded parameters (default: the campaign that "
        "campaign.name names)",
    )


def add_status(sub) -> None:
    p = sub.add_parser(
        "status",
        help="campaigns in a workspace, rounds done, latest accuracy",
        description="Every campaign of the workspace: its strategy, the rounds done (acquisition "
        "rounds after round 0, the initial labeled set), the labeled count, the latest test "
        "accuracy and git tag; and any batch that waits for labels.",
    )
    workspace_arg(p)
    p.add_argument("--format", choices=["table", "json"], default="table", help="a table, or json")


def add_cycle(sub) -> None:
    p = sub.add_parser(
        "cycle",
        help="run exactly one round of the workspace's campaign now",
        description="Run one round of the workspace's campaign from where it stands and stop: "
        "round 0 if it has none, else the next round (or the completion of a batch people "
        "labeled). Does nothing once campaign.rounds rounds are done.",
    )
    workspace_arg(p)
    config_args(p, "campaign.rounds=30")
    p.add_argument(
        "--campaign",
        metavar="NAME",
        help="advance NAME with its recorded parameters (default: the campaign that "
        "campaign.name names)",
    )


# ---------------------------------------------------------------------------- handlers
def cmd_init(args: argparse.Namespace) -> int:
    directory = args.directory or app.default_workspace()
    if args.clone:
        if args.config or args.remote or args.git_remote:
            print(
                "--clone takes the parameters and remotes from the shared workspace: drop "
                "--config, --dvc-remote and --git-remote",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        joined = app.join_workspace(args.clone, directory)
        print(f"joined the shared workspace {joined.url}: {joined.root}")
        print(f"  DVC remote: {joined.dvc_remote}")
        for name, last in joined.last_rounds.items():
            print(f"  campaign {name}: last committed round {last}")
    else:
        made = app.init_workspace(
            directory, config=args.config, dvc_remote=args.remote, git_remote=args.git_remote
        )
        print(f"workspace ready: {made.root}")
        if made.git_remote:
            print(f"  shared through: {made.git_remote} (git) and {made.dvc_remote} (DVC)")
        print(f"  parameters: {made.params_path}")
    print(f"  run a campaign: {baldflow_command()} run --workspace {quoted(directory)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    outcome = app.run_campaign(run_request(args), progress=say)
    finished = outcome.finished
    if finished is not None:
        # Nothing to do, answered from the workspace: no server started, no flow run recorded.
        name = outcome.campaign
        if finished.waiting is not None:
            said = f"waits for labels for round {finished.waiting}"
        else:
            rounds = outcome.config.campaign.rounds
            said = f"is complete: all {rounds} rounds are done (raise campaign.rounds to go on)"
        where = outcome.workspace
        say(f"baldflow: campaign {name!r} in {where} {said}; nothing was run or recorded")
        say_batch_beyond(outcome.workspace, name, finished)
    print_run_summary(outcome.record)
    return 0


def cmd_cycle(args: argparse.Namespace) -> int:
    outcome = app.run_cycle(run_request(args), progress=say)
    result = outcome.record
    finished = outcome.finished
    if finished is not None:
        said = (
            f"all {finished.last_round} rounds were done already"
            if finished.waiting is None
            else f"waiting for labels for round {finished.waiting}"
        )
        print(
            f"campaign {finished.campaign}: {last_completed(finished.last_round)} ({said}; "
            "nothing was run or recorded)"
        )
        say_batch_beyond(outcome.workspace, finished.campaign, finished)
        print_waiting(result)
        return 0
    if outcome.busy:
        print(f"skipped: {ws_root(args)} is busy with another round")
        return EXIT_LOCKED
    said = {
        "round-limit": "one round done",
        "rounds": (
            f"one round done: all {result.get('last_round')} rounds are done now"
            if result.get("timings")
            else f"all {result.get('last_round')} rounds were done already"
        ),
        "pool-empty": "the pool is empty",
        "waiting-for-labels": "waiting for labels",
    }.get(result["stopped"], result["stopped"])
    print(f"campaign {result['campaign']}: {last_completed(result['last_round'])} ({said})")
    print_waiting(result)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import dataclasses

    found = app.status(args.workspace)
    if args.format == "json":
        print_json([dataclasses.asdict(c) for c in found.campaigns])
        return 0
    from rich.table import Table

    from baldflow.audit.report import console, plain

    table = Table(
        title=plain(f"campaigns in {found.root}"),
        caption="rounds done: acquisition rounds after round 0, the initial labeled set",
    )
    for column in ("campaign", "strategy", "rounds done", "labeled", "latest test acc.", "tag"):
        # Names and tags are meant to be copied: never cut or fold them; wrap the rest.
        table.add_column(column, no_wrap=column in ("campaign", "tag"))
    for rec in found.campaigns:
        acc = rec.latest_test_accuracy
        table.add_row(
            plain(rec.campaign),
            plain(rec.strategy or "-"),
            plain("-" if rec.rounds_done is None else str(rec.rounds_done)),
            plain(str(rec.labeled)),
            f"{acc:.4f}" if acc is not None else "-",
            plain(rec.latest_tag or "-"),
        )
    console().print(table)
    for batch in found.waiting:
        where = str(batch.sheet)
        if batch.studio_project is not None:
            # Out in Label Studio: annotations count once `label pull` stores them.
            where = f"Label Studio project {batch.studio_project} ({batch.studio_address})"
        print(
            f"{batch.campaign}: round {batch.round} waiting for labels "
            f"({batch.imported} of {batch.batch_size} imported): {where}"
        )
        if batch.beyond_length:
            print(
                f"  (past the {batch.rounds_asked} round(s) campaign {batch.campaign} records: "
                f"importing its labels extends the campaign to {batch.round} rounds)"
            )
    if not found.campaigns and not found.waiting:
        print(f"no campaigns yet: {baldflow_command()} run --workspace {quoted(found.root)}")
    return 0


PARSERS = {"init": add_init, "run": add_run, "status": add_status, "cycle": add_cycle}
COMMANDS = {"init": cmd_init, "run": cmd_run, "status": cmd_status, "cycle": cmd_cycle}
