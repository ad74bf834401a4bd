"""The `baldflow` command line: a thin layer over the application layer (baldflow.app) that
parses arguments, calls it, prints its results and turns its errors into exit codes.

One module per command group: campaign (init, run, cycle, status), labels (label,
label-studio), audit (history, show, diff, report, verify), schedule (schedule, deploy,
server), stack and pool; output holds the printing they share. Heavy modules (torch, prefect,
mlflow, dvc) are imported inside the commands so --help is fast.
"""

from __future__ import annotations

import argparse
import os
import sys

from baldflow.app import DEFAULT_WORKSPACE
from baldflow.app import default_workspace as _default_workspace
from baldflow.cli import audit, campaign, labels, plugins, pool, schedule, stack
from baldflow.cli.common import (
    EXIT_CONFIG,
    EXIT_ERROR,
    EXIT_LABELS,
    EXIT_LOCKED,
    EXIT_PREFLIGHT,
    HIDDEN_ALIASES,
    SCHEDULE_COMMANDS,
    SET_METAVAR,
    Parser,
)

__all__ = [
    "COMMANDS",
    "DEFAULT_WORKSPACE",
    "EXIT_CONFIG",
    "EXIT_ERROR",
    "EXIT_LABELS",
    "EXIT_LOCKED",
    "EXIT_PREFLIGHT",
    "HIDDEN_ALIASES",
    "SCHEDULE_COMMANDS",
    "SET_METAVAR",
    "_default_workspace",
    "_resolve_config",
    "build_parser",
    "main",
    "report_error",
]

_GROUPS = (campaign, labels, audit, schedule, stack, pool, plugins)
# The order `baldflow --help` lists the commands in.
_ORDER = (
    "init", "run", "history", "status", "label", "show", "diff", "report", "cycle",
    "schedule", "deploy", "server", "verify", "stack", "label-studio", "pool", "plugins",
)  # fmt: skip
_PARSERS = {name: add for group in _GROUPS for name, add in group.PARSERS.items()}
COMMANDS = {name: handler for group in _GROUPS for name, handler in group.COMMANDS.items()}


def build_parser() -> argparse.ArgumentParser:
    from baldflow import __version__

    parser = Parser(
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
    for name in _ORDER:
        _PARSERS[name](sub)
    return parser


def _resolve_config(args: argparse.Namespace, ws_root):
    """The parameters of a run or cycle that `args` asks for (see baldflow.app.resolve_config)."""
    from baldflow.app import resolve_config

    return resolve_config(ws_root, args.config, args.overrides, getattr(args, "campaign", None))


def report_error(exc: BaseException) -> int | None:
    """The one place that turns an error into a message on stderr and an exit code.

    Exit codes: 0 done; 1 (EXIT_ERROR) no such workspace, campaign or file, or `verify` found
    problems; 2 (EXIT_CONFIG) a parameter is wrong or contradicts the campaign's record;
    3 (EXIT_LOCKED) another run holds the workspace; 4 (EXIT_LABELS) a label file was refused;
    5 (EXIT_PREFLIGHT) this machine lacks what the campaign needs (data files, the device,
    a reachable tracking server or object store, a plug-in that imports and keeps its
    contract). None for an
    error that is not the user's to fix (a bug): the caller re-raises it.
    """
    from baldflow.config import ConfigError
    from baldflow.data.object_store import ObjectStoreError
    from baldflow.labeling import LabelImportError
    from baldflow.labeling.label_studio import LabelStudioError
    from baldflow.plugins import PluginError
    from baldflow.preflight import PreflightError
    from baldflow.workspace import WorkspaceError
    from baldflow.workspace.lock import WorkspaceLockedError

    if isinstance(exc, ConfigError):
        code = EXIT_CONFIG
    elif isinstance(exc, (PreflightError, LabelStudioError, PluginError, ObjectStoreError)):
        # Label Studio or the object store unreachable, or refusing the credentials: what the
        # campaign needs is missing. (A round it stops has committed nothing; run it again.)
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
    if isinstance(exc, (ConfigError, PreflightError, PluginError)):
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
