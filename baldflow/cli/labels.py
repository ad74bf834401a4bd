"""`label import`, `label pull` and `label-studio`: people's labels, from files or a Label
Studio server this workspace runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from baldflow import app
from baldflow.cli.common import EXIT_ERROR, EXIT_LOCKED, campaign_arg, workspace_arg, ws_root
from baldflow.cli.output import print_waiting, say, say_what_next


# ---------------------------------------------------------------------------- parsers
def add_label(sub) -> None:
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
    workspace_arg(q)
    campaign_arg(q, "the one with a batch waiting for labels")
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
    workspace_arg(q)
    campaign_arg(q, "the one with a batch waiting for labels")
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


def add_label_studio(sub) -> None:
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
        workspace_arg(q)
        q.add_argument("--dir", metavar="DIR", help="the server's folder (default: "
                       "<workspace>/label-studio)")  # fmt: skip
        if name == "up":
            q.add_argument("--port", type=int, metavar="PORT", help="default: the recorded one, "
                           "else a free one")  # fmt: skip


# ---------------------------------------------------------------------------- handlers
def cmd_label(args: argparse.Namespace) -> int:
    complete = not args.no_complete
    if args.label_command == "pull":
        outcome = app.pull_labels(
            workspace=args.workspace,
            campaign=args.campaign,
            resend=args.resend,
            complete=complete,
            progress=say,
        )
        unfinished = "the round completes once every task has an annotation (pull again then)"
    else:
        outcome = app.import_labels(
            args.file,
            workspace=args.workspace,
            campaign=args.campaign,
            partial=args.partial,
            labeled_by=args.by,
            complete=complete,
            progress=say,
        )
        unfinished = "the round completes once the whole batch is labeled (import more files)"
    if not outcome.complete:
        print(unfinished)
        return 0
    if outcome.completed is None:
        print("batch complete; the next `baldflow cycle`, scheduled cycle or run completes it")
        return 0
    result = outcome.completed.record
    if outcome.completed.busy:
        # Another clone of a shared workspace holds its round slot (see flows/slots.py).
        why = result.get("message") or "the workspace is busy"
        print(
            f"the labels are stored; the round is not completed yet ({why}): the next "
            "`baldflow cycle`, scheduled cycle or run completes it"
        )
        return EXIT_LOCKED
    print(f"round {result['last_round']} of {result['campaign']} committed")
    print_waiting(result)
    if result.get("waiting_for_labels") is None:
        say_what_next(ws_root(args), result)
    return 0


def _studio_home(args: argparse.Namespace) -> Path:
    from baldflow.stack.label_studio import LOCAL_SERVER_DIR

    if args.dir:
        return Path(args.dir).absolute()
    return ws_root(args) / LOCAL_SERVER_DIR


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


PARSERS = {"label": add_label, "label-studio": add_label_studio}
COMMANDS = {"label": cmd_label, "label-studio": cmd_label_studio}
