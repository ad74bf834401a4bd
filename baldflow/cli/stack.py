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


# ---------------------------------------------------------------------------- handlers
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
            print(
                f"  MLflow admin: {stack.admin_username}, password in {stack.admin_password_file}"
            )
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


PARSERS = {"stack": add_stack}
COMMANDS = {"stack": cmd_stack}
