"""`history`, `show`, `diff`, `report` and `verify`: what was acquired when and why, and
whether the workspace's records agree."""

from __future__ import annotations

import argparse
import sys

from baldflow import app
from baldflow.cli.common import EXIT_ERROR, EXIT_LOCKED, campaign_arg, workspace_arg
from baldflow.cli.output import print_json, short

ONLY_CAMPAIGN = "the workspace's only campaign"


# ---------------------------------------------------------------------------- parsers
def add_history(sub) -> None:
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
    workspace_arg(p)
    campaign_arg(p, "every campaign of the workspace")
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


def add_show(sub) -> None:
    p = sub.add_parser(
        "show",
        help="one round: its batch, class histogram, MLflow run, tag",
        description="One completed round: its batch with scores, selection probabilities and "
        "who labeled each sample, the class histogram, the git tag and commit, the labeled "
        "set's size and md5, and the MLflow run that chose the batch (status, metrics, and its "
        "page in the MLflow UI).",
    )
    workspace_arg(p)
    campaign_arg(p, ONLY_CAMPAIGN)
    p.add_argument(
        "--round", type=int, required=True, metavar="N", help="the round; 0 is the initial set"
    )
    p.add_argument(
        "--format", choices=["table", "json"], default="table", help="a table, or json with all"
    )


def add_diff(sub) -> None:
    p = sub.add_parser(
        "diff",
        help="what the labeled set gained between two rounds (via DVC)",
        description="The samples the labeled set gained from round N to a later round M, read "
        "through DVC at both round tags. Rounds only add labels: a sample removed or relabeled "
        "means the history was rewritten, and is reported as such.",
    )
    workspace_arg(p)
    campaign_arg(p, ONLY_CAMPAIGN)
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


def add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="a self-contained HTML report of a campaign",
        description="Write one HTML page about a campaign: the learning curve, the rounds, each "
        "round's acquisitions with a class histogram and (image data) thumbnails, and the full "
        "ledger. Images are embedded and nothing is loaded from elsewhere.",
    )
    workspace_arg(p)
    campaign_arg(p, ONLY_CAMPAIGN)
    p.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="HTML file to write (default: DIR/report-<campaign>.html)",
    )


def add_verify(sub) -> None:
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
    workspace_arg(p)
    campaign_arg(p, "every campaign")
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


# ---------------------------------------------------------------------------- handlers
def cmd_history(args: argparse.Namespace) -> int:
    import dataclasses

    rows = app.history(args.workspace, campaign=args.campaign, round=args.round, sample=args.sample)
    if args.sample is not None and (args.format == "table" or not rows):
        from baldflow.audit.report import print_story

        # Also for csv/json with no rows: an id that is not in the pool is an error
        # (AuditError, the not-found exit), never an empty answer like "never acquired".
        story = app.sample_story(args.sample, workspace=args.workspace, campaign=args.campaign)
        if args.format == "table":
            print_story(story)
            return 0
    if args.format == "csv":
        from baldflow.workspace.ledger import ledger_text

        # For people (spreadsheets): formula-like text cells neutralised; ledger.csv stays exact.
        sys.stdout.write(ledger_text(rows, header=True, for_people=True))
    elif args.format == "json":
        print_json([dataclasses.asdict(r) for r in rows])
    else:
        from rich.table import Table

        from baldflow.audit.report import LEDGER_COLUMNS, console, plain

        table = Table(title=plain(f"acquisitions in {app.workspace_root(args.workspace)}"))
        columns = ["campaign", *LEDGER_COLUMNS, "mlflow_run_id"]
        for column in columns:
            table.add_column(column.replace("selection_", "sel. "), overflow="fold")
        for r in rows:
            record = dataclasses.asdict(r)
            table.add_row(*[plain(short(record[c])) for c in columns])
        console().print(table)
        if not rows:
            print("no acquisitions match")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    record = app.show_round(args.round, workspace=args.workspace, campaign=args.campaign)
    if args.format == "json":
        print_json(record)
        return 0
    from baldflow.audit.report import print_round

    print_round(record)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    record = app.diff_rounds(
        args.from_round, args.to_round, workspace=args.workspace, campaign=args.campaign
    )
    if args.format == "json":
        print_json(record)
    elif args.format == "csv":
        import csv

        from baldflow.common import spreadsheet_safe

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["change", "sample_id", "label", "round"])
        # Ids are the only text cells: neutralised for spreadsheets (labels, rounds are numbers).
        for change in ("added", "removed"):
            for row in record[change]:
                writer.writerow(
                    [change, spreadsheet_safe(row["sample_id"]), row["label"], row["round"]]
                )
    else:
        from baldflow.audit.report import print_diff

        print_diff(record)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    path = app.write_report(workspace=args.workspace, campaign=args.campaign, output=args.output)
    print(f"report written: {path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    found = app.verify(
        args.workspace,
        campaign=args.campaign,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
    )
    if not found.problems:
        print(f"no campaigns in {found.root}")
        return 0
    for name, problems in found.problems.items():
        if not problems:
            print(f"{name}: consistent")
            continue
        print(f"{name}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  - {problem}")
    return 0 if found.consistent else EXIT_ERROR


PARSERS = {
    "history": add_history,
    "show": add_show,
    "diff": add_diff,
    "report": add_report,
    "verify": add_verify,
}
COMMANDS = {
    "history": cmd_history,
    "show": cmd_show,
    "diff": cmd_diff,
    "report": cmd_report,
    "verify": cmd_verify,
}
