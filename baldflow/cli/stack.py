"""`stack`: the team's servers (PostgreSQL, MLflow, Prefect, git and DVC remotes) from one
directory, started, checked and stopped by PID (baldflow.stack)."""

from __future__ import annotations

import argparse
from pathlib import Path

from baldflow.cli.common import EXIT_ERROR


# ---------------------------------------------------------------------------- parsers
def add_stack(sub) -> None:
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
        "status",
        help="health of each part (exit 1 if any is down)",
        description="Check "
        "each part: PostgreSQL login, MLflow /health, Prefect /api/health, the remotes.",
    )
    down = actions.add_parser(
        "down",
        help="stop the servers (data stays)",
        description="Stop the servers of the "
        "stack in DIR by their recorded PIDs; its data, remotes and secrets stay.",
    )
    for q in (up, status, down):
        q.add_argument("--dir", required=True, metavar="STACK", help="the stack's directory")
    _add_backup_actions(actions)
    for name in ("postgres", "mlflow", "prefect"):
        up.add_argument(
            f"--{name}-port",
            type=int,
            metavar="PORT",
            help=f"port of the {name} server (default: the recorded one, else a free one)",
        )
    up.add_argument(
        "--auth",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="MLflow behind basic auth, or not (default: as the stack was, else no auth)",
    )
    up.add_argument(
        "--artifacts-destination",
        metavar="DIR_OR_URI",
        help="where MLflow stores artifacts (default: STACK/mlflow-artifacts)",
    )
    up.add_argument(
        "--host",
        metavar="ADDRESS",
        help="the address the MLflow and Prefect servers listen on, one members on other "
        "machines reach (default: the recorded one, else 127.0.0.1; PostgreSQL stays on "
        "127.0.0.1); off loopback it needs --auth",
    )
    up.add_argument(
        "--group",
        metavar="NAME",
        help="share the git and DVC remotes with this Unix group (members who are other "
        "accounts of this machine; default: the recorded one, else none)",
    )
    up.add_argument(
        "--label-studio",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run the team's Label Studio (data in STACK/label-studio, admin in "
        "STACK/secrets; default: as the stack was, else not)",
    )
    up.add_argument(
        "--label-studio-port",
        type=int,
        metavar="PORT",
        help="port of Label Studio (default: the recorded one, else a free one)",
    )
    _add_user_actions(actions)


def _add_user_actions(actions) -> None:
    """`stack user add|list|password|remove`: the team's members (baldflow.stack.members)."""
    user = actions.add_parser(
        "user",
        help="the team's members: MLflow logins with the member role, their env files",
        description="Members of the stack's team. `add NAME` creates NAME's MLflow login "
        "with the role baldflow-member (MANAGE on every experiment and registered model: run, "
        "resume, repair and discard in every campaign, register its models) and writes "
        "STACK/members/NAME.env (their login and the servers' addresses, 0600). `password` "
        "gives a new password, `remove` deletes the login. Needs a stack with --auth.",
    )
    which = user.add_subparsers(dest="user_command", metavar="ACTION")
    which.required = True
    add = which.add_parser(
        "add",
        help="add a member (again: refresh their env file)",
        description="Create NAME's MLflow login (a new random password) with the role "
        "baldflow-member and, when the stack runs Label Studio, their account there; write "
        "STACK/members/NAME.env. An existing login keeps its password; its env file is "
        "refreshed with the servers' current addresses.",
    )
    password = which.add_parser(
        "password",
        help="a new password, in a new env file",
        description="Give member NAME a new random password (MLflow and Label Studio) and "
        "rewrite STACK/members/NAME.env; the old password stops working within seconds.",
    )
    remove = which.add_parser(
        "remove",
        help="delete the member's login and env file",
        description="Delete NAME's MLflow login (their runs keep their name), deactivate "
        "their Label Studio account and remove STACK/members/NAME.env: their next command "
        "is refused.",
    )
    listing = which.add_parser(
        "list",
        help="the server's logins, which are members, env files",
        description="Every login of the stack's MLflow server: admin, member (holds the "
        "role) or no role, and the env file the stack wrote for it.",
    )
    for q in (add, password, remove, listing):
        q.add_argument("--dir", required=True, metavar="STACK", help="the stack's directory")
    for q in (add, password, remove):
        q.add_argument("name", metavar="NAME", help="the member's login")
    for q in (add, password):
        q.add_argument(
            "--unix-user",
            metavar="ACCOUNT",
            help="the member's Unix account on this host: their env file becomes theirs "
            "(default: the file stays the admin's, to hand over)",
        )


def _add_backup_actions(actions) -> None:
    """`stack backup` and `stack restore` (baldflow.stack.backup)."""
    backup = actions.add_parser(
        "backup",
        help="back up the stack (databases, remotes, artifacts, secrets) into a new directory",
        description="Back up the stack in STACK into the new directory DEST, while it runs: "
        "pg_dump of the mlflow, mlflow_auth and prefect databases, a git bundle, the DVC "
        "remote, the MLflow artifacts, Label Studio's data, the secrets, and last a manifest "
        "with each file's sha256.",
    )
    backup.add_argument("--dir", required=True, metavar="STACK", help="the stack's directory")
    backup.add_argument("dest", metavar="DEST", help="a new or empty directory")
    restore = actions.add_parser(
        "restore",
        help="restore a backup into a new stack directory and bring it up",
        description="Check the backup SRC against its manifest, restore it into the new or "
        "empty directory STACK and start the stack there (on the old ports where free).",
    )
    restore.add_argument("--dir", required=True, metavar="STACK", help="a new stack directory")
    restore.add_argument("src", metavar="SRC", help="a backup made by `baldflow stack backup`")


def _cmd_backup(args: argparse.Namespace) -> int:
    from baldflow.stack import backup

    def say(line: str) -> None:
        print(line, flush=True)

    if args.stack_command == "backup":
        backup.backup_stack(args.dir, args.dest, report=say)
        return 0
    stack = backup.restore_stack(args.src, args.dir, report=say)
    print(f"stack restored in {stack.dir} and up:")
    for key, value in stack.environment().items():
        print(f"  {key}={value}")
    print(f"team members: . {stack.env_file}")
    return 0


# ---------------------------------------------------------------------------- handlers
def _cmd_user(args: argparse.Namespace) -> int:
    from baldflow.stack import members

    def say(line: str) -> None:
        print(line, flush=True)

    if args.user_command == "add":
        member = members.add_member(args.dir, args.name, unix_user=args.unix_user, report=say)
        if member.env_file is not None:
            print(f"{member.name} sources: . {member.env_file}")
        return 0
    if args.user_command == "password":
        member = members.set_password(args.dir, args.name, unix_user=args.unix_user, report=say)
        print(f"{member.name} sources: . {member.env_file}")
        return 0
    if args.user_command == "remove":
        if not members.remove_member(args.dir, args.name, report=say):
            print(f"{args.name} was not a member")
        return 0
    for member in members.list_members(args.dir):
        kind = "admin" if member.is_admin else ("member" if member.member_role else "no role")
        print(f"{member.name:<20} {kind:<8} {member.env_file or '-'}")
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    if args.stack_command in ("backup", "restore"):
        return _cmd_backup(args)
    if args.stack_command == "user":
        return _cmd_user(args)
    from baldflow.stack import label_studio as studio
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
            host=args.host,
            group=args.group,
            label_studio=args.label_studio,
            label_studio_port=args.label_studio_port,
        )
        print(f"stack in {stack.dir} is {'already ' if stack.already_up else ''}up:")
        for key, value in stack.environment().items():
            print(f"  {key}={value}")
        if stack.auth:
            print(
                f"  MLflow admin: {stack.admin_username}, password in {stack.admin_password_file}"
            )
        if stack.prefect_auth_file is not None:
            print(f"  Prefect API auth string (members' PREFECT_API_AUTH_STRING) in "
                  f"{stack.prefect_auth_file}")
        if stack.label_studio_url:
            print(f"  Label Studio admin: {studio.ADMIN}, password and token in "
                  f"{stack.dir / studio.STACK_CREDENTIALS}")
        print(f"team members: . {stack.env_file}")
        return 0
    if args.stack_command == "status":
        rows = team.stack_status(args.dir)
        for part, ok, detail in rows:
            print(f"{part:<12} {'ok' if ok else 'DOWN':<5} {detail}")
        return 0 if all(ok for _, ok, _ in rows) else EXIT_ERROR
    team.stack_down(args.dir, report=say)
    print(f"stack in {Path(args.dir).absolute()} is down")
    return 0


PARSERS = {"stack": add_stack}
COMMANDS = {"stack": cmd_stack}
