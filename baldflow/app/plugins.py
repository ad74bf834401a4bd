"""What plug-ins this environment has: every registered and installed name of the four seams."""

from __future__ import annotations

import dataclasses

from baldflow.plugins import REGISTRIES


@dataclasses.dataclass(frozen=True)
class PluginRow:
    """One name a campaign can use: the seam, the package and version that provide it, where
    it comes from (builtin, registered, entry point) and, for an entry point that does not
    load, why."""

    kind: str
    name: str
    package: str
    version: str
    origin: str
    problem: str = ""


@dataclasses.dataclass(frozen=True)
class PluginSeam:
    """A seam (model, source, trainer, strategy): its entry-point group, the signature its
    plug-ins keep, and the names it has."""

    kind: str
    group: str
    contract: str
    rows: list[PluginRow]


def list_plugins(kinds: tuple[str, ...] = ()) -> list[PluginSeam]:
    """Every seam (or those in `kinds`) with the names it answers to. Importing an entry point
    that fails is reported in its row, not raised: one broken package must not hide the rest."""
    seams = []
    for kind, registry in REGISTRIES.items():
        if kinds and kind not in kinds:
            continue
        rows = [PluginRow(**row) for row in registry.listing()]
        seams.append(PluginSeam(kind, registry.group, registry.contract, rows))
    return seams
