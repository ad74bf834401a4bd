"""`plugins`: every model, data source, trainer and strategy name this environment has."""

from __future__ import annotations

import argparse

from baldflow.cli.common import EXIT_ERROR

KINDS = ("model", "source", "trainer", "strategy")


def add_plugins(sub) -> None:
    p = sub.add_parser(
        "plugins",
        help="list the models, data sources, trainers and strategies a campaign can name",
        description="Every name model.name, data.source, training.trainer and "
        "acquisition.strategy accept here: baldflow's own and those that installed packages "
        "give through entry points (groups baldflow.models, baldflow.sources, "
        "baldflow.trainers, baldflow.strategies), with the package and version that provides "
        "each. An import string package.module:callable is accepted too.",
    )
    p.add_argument("--kind", choices=KINDS, action="append", default=[],
                   help="only this seam (repeatable; default: all four)")  # fmt: skip


def cmd_plugins(args: argparse.Namespace) -> int:
    from baldflow.app import list_plugins
    from baldflow.common import printable

    broken = 0
    for seam in list_plugins(tuple(args.kind)):
        print(f"{seam.kind}s  (entry points: {seam.group})")
        if seam.contract:
            print(f"  contract: {seam.contract}")
        width = max((len(printable(row.name)) for row in seam.rows), default=4)
        for row in seam.rows:
            provider = f"{row.package} {row.version}".strip() or "(no installed package)"
            line = f"  {printable(row.name):<{width}}  {provider}  [{row.origin}]"
            if row.problem:
                broken += 1
                line += f"  BROKEN: {printable(row.problem)}"
            print(line)
        print()
    return EXIT_ERROR if broken else 0


PARSERS = {"plugins": add_plugins}
COMMANDS = {"plugins": cmd_plugins}
