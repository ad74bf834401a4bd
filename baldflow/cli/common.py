"""What every command module of the CLI shares: exit codes, the parser's kind, the options
several commands take, and the workspace an argparse Namespace names."""

from __future__ import annotations

import argparse
from pathlib import Path

from baldflow.app import DEFAULT_WORKSPACE, RunRequest, workspace_root

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

CONFIG_HELP = "parameter file (default: the workspace's params.yaml, else built-in defaults)"


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


class Parser(argparse.ArgumentParser):
    """A parser whose help shows defaults; its subcommands' parsers are of the same kind."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def workspace_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workspace",
        "-w",
        default=None,
        metavar="DIR",
        help="workspace directory (default: $BALDFLOW_WORKSPACE, the current directory if it "
        f"is a workspace, else ./{DEFAULT_WORKSPACE})",
    )


def campaign_arg(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--campaign", metavar="NAME", help=f"campaign name (default: {default})")


def config_args(parser: argparse.ArgumentParser, example: str) -> None:
    """--config FILE and repeatable --set SECTION.KEY=VALUE (help shows `example`)."""
    parser.add_argument("--config", "-c", metavar="FILE", help=CONFIG_HELP)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar=SET_METAVAR,
        help=f"override one parameter, e.g. --set {example} (repeatable; default: none)",
    )


def ws_root(args: argparse.Namespace) -> Path:
    return workspace_root(args.workspace)


def run_request(args: argparse.Namespace) -> RunRequest:
    """The application layer's arguments of run, cycle, schedule and deploy."""
    return RunRequest(
        workspace=args.workspace,
        config=args.config,
        overrides=tuple(args.overrides),
        campaign=getattr(args, "campaign", None),
    )
