"""The data-source seam: `DataSource`, what every source (built-in or plug-in) is to a campaign,
and the checks that a plug-in's data pass before a campaign uses them."""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from baldflow.common import short_repr
from baldflow.data.splits import DataSourceError, DataSplits, check_texts

if TYPE_CHECKING:
    from baldflow.data.pool import CampaignPool

# Keyword arguments a campaign passes a source itself, each from its own field: an option of
# the same name in data.options would collide with them (preflight names the field to use).
OPTION_OWNERS = {
    "root": "data.root",
    "seed": "campaign.seed",
    "repeat": "data.repeat",
    "noise_std": "data.noise_std",
    "initial_per_class": "campaign.initial_per_class",
}


class SourceNotReadyError(DataSourceError):
    """A source's files are not where it will look (found before the campaign starts); one line
    with the problem and the `--set` that fixes it."""


@dataclasses.dataclass(frozen=True)
class SourceParams:
    """A campaign's data parameters, as `DataSource.open` gets them: `data.root`,
    `data.repeat`, `data.noise_std`, `data.options`, `campaign.initial_per_class` and
    `campaign.seed`."""

    root: str | Path | None = None
    repeat: int = 1
    noise_std: float = 0.0
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    initial_per_class: int = 2
    seed: int = 0


class DataSource:
    """A source of a campaign's data, named by `data.source` in params.yaml.

    The contract (built-ins and plug-ins alike; register a plug-in with
    `baldflow.plugins.SOURCE_PLUGINS.register(name, obj)`, an entry point of group
    `baldflow.sources`, or name it by an import string `package.module:attr`):

    - `name`: how messages name the source; the registry sets it to the spec when empty.
    - `streamed`: False for a source loaded whole into memory (implement `load`); True for a
      pool read from disk by rows (implement `open`, returning a `CampaignPool` whose
      `streamed` is True, e.g. a `StreamedPool`).
    - `load(root, *, seed, **options) -> DataSplits`: pool, validation and test sets with
      stable, unique text sample ids. The split must depend on `seed` alone, so a campaign that
      resumes sees the same pool. Keyword-only parameters are the source's `data.options`.
    - `open(params) -> CampaignPool`: the campaign's pool with its initial labeled set. The
      default loads through `load`, checks what it gave (`check_splits`), chooses
      `initial_per_class` ids per class and repeats the pool `repeat` times with `noise_std`
      noise (`baldflow.data.repeat`), exactly as for the built-in sources.
    - `accepted_options()`: the names `data.options` may hold (default: the keyword-only
      parameters of `load`, less `seed` and those a campaign sets itself).
    - `preflight(root, options)`: raise `SourceNotReadyError` (one line with the fix) when the
      files are missing, before any server starts. Default: nothing to check.
    - `describe_item(root, sample_id)`: where a person finds the item to label (the hand-off
      sheet's `item` column). Default: "<name> at <root>, sample <id>".

    A plain function `load(root, *, seed, **options) -> DataSplits` is a source too: the
    registry wraps it.
    """

    name: str = ""
    streamed: bool = False
    # Built-ins whose loaders already check ids and class names (`sources._finish`, the disk
    # source's readers) skip the plug-in checks: they would read every id a second time.
    checked_by_loader: ClassVar[bool] = False

    def load(self, root: str | None, *, seed: int, **options: Any) -> DataSplits:
        raise DataSourceError(
            f"data source {self.name!r} is streamed: it has no load(); open it with open()"
            if self.streamed
            else f"data source {self.name!r} implements neither load() nor open()"
        )

    def open(self, params: SourceParams) -> CampaignPool:
        from baldflow.data.memory_pool import MemoryPool
        from baldflow.data.repeat import initial_then_repeat

        root = None if params.root is None else os.fspath(params.root)
        if self.checked_by_loader:
            splits = load_with_options(self, root, params.seed, params.options)
        else:
            try:
                splits = load_with_options(self, root, params.seed, params.options)
            except DataSourceError as error:
                # A plug-in's own message (e.g. DataSplits refusing its ids) names no source.
                if str(error).startswith("data source "):
                    raise
                raise _named(error, self.name) from error
            check_splits(self.name, splits)
        splits, initial_ids = initial_then_repeat(
            splits,
            repeat=params.repeat,
            noise_std=params.noise_std,
            initial_per_class=params.initial_per_class,
            seed=params.seed,
        )
        return MemoryPool(splits, initial_ids)

    def accepted_options(self) -> list[str]:
        return keyword_options(self.load)

    def preflight(self, root: Path | None, options: Mapping[str, Any]) -> None:
        return None

    def describe_item(self, root: str | None, sample_id: str) -> str:
        if root:
            return f"{self.name} at {root}, sample {sample_id}"
        return f"{self.name} sample {sample_id}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class FunctionSource(DataSource):
    """An in-memory source made of a loader function (and, optionally, its preflight check)."""

    def __init__(
        self,
        loader: Callable[..., DataSplits],
        *,
        name: str = "",
        check: Callable[[Path | None, Mapping[str, Any]], None] | None = None,
    ) -> None:
        self.loader = loader
        self.name = name
        self.check = check

    def load(self, root: str | None, *, seed: int, **options: Any) -> DataSplits:
        return self.loader(root, seed=seed, **options)

    def accepted_options(self) -> list[str]:
        return keyword_options(self.loader)

    def preflight(self, root: Path | None, options: Mapping[str, Any]) -> None:
        if self.check is not None:
            self.check(root, options)


def _named(error: DataSourceError, name: str) -> DataSourceError:
    """`error` with the source named in front, of the same class where it can be (so
    DataNotFoundError stays one)."""
    text = f"data source {name!r}: {error}"
    try:
        return type(error)(text)
    except Exception:  # noqa: BLE001 (a subclass whose constructor takes other arguments)
        return DataSourceError(text)


def keyword_options(function: Callable[..., Any]) -> list[str]:
    """The keyword-only parameters of `function` that `data.options` may set."""
    return [
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in OPTION_OWNERS
    ]


def load_with_options(
    source: DataSource, root: str | None, seed: int, options: Mapping[str, Any]
) -> DataSplits:
    """`source.load(root, seed=seed, **options)`, an unknown option reported as one line."""
    try:
        return source.load(root, seed=seed, **dict(options))
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            raise DataSourceError(
                f"invalid option for data source {source.name!r}: {error}"
            ) from error
        raise


# ---------------------------------------------------------------------------------------------
# What a plug-in gives, checked once when a campaign opens it: a bad id would otherwise surface
# rounds later, in a sheet, a CSV or a git commit.


def check_splits(spec: str, splits: Any) -> None:
    """Refuse what a campaign cannot use: pool ids that are not text or not unique (or that no
    output shows faithfully, `check_texts`), class names that are not non-empty text, labels
    that are not integers in [0, number of classes). DataSourceError in one line starting
    with `data source '<spec>'`."""
    where = f"data source {spec!r}"
    if not isinstance(splits, DataSplits):
        raise DataSourceError(
            f"{where}: load() returned a {type(splits).__name__}, not baldflow.data.DataSplits"
        )
    check_ids(spec, splits.pool_ids)
    check_class_names(spec, splits.class_names)
    num_classes = len(splits.class_names)
    for part in ("pool", "val", "test"):
        _check_labels(where, part, getattr(splits, f"{part}_y"), num_classes)


def check_ids(spec: str, ids: Any) -> None:
    """Pool ids: all `str` (the first that is not named with its type), unique (the first
    duplicate named), each showable (`check_texts`)."""
    where = f"data source {spec!r}"
    ids = list(ids)
    for position, value in enumerate(ids):
        if not isinstance(value, str):
            raise DataSourceError(
                f"{where}: pool id {short_repr(value)} (entry {position}) is of type "
                f"{type(value).__name__}, not str; sample ids must be text"
            )
    check_texts("sample id", ids, where)


def check_class_names(spec: str, class_names: Any) -> None:
    where = f"data source {spec!r}"
    if not isinstance(class_names, list | tuple) or not class_names:
        raise DataSourceError(
            f"{where}: class_names must be a non-empty list of text, got {short_repr(class_names)}"
        )
    for position, value in enumerate(class_names):
        if not isinstance(value, str):
            raise DataSourceError(
                f"{where}: class name {short_repr(value)} (entry {position}) is of "
                f"type {type(value).__name__}, not str"
            )
    check_texts("class name", list(class_names), where)


def _check_labels(where: str, part: str, labels: Any, num_classes: int) -> None:
    if (
        not isinstance(labels, torch.Tensor)
        or labels.dtype.is_floating_point
        or (labels.dtype in (torch.bool, torch.complex64, torch.complex128))
    ):
        kind = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise DataSourceError(f"{where}: {part}_y must be a tensor of integer labels, got {kind}")
    bad = torch.nonzero((labels < 0) | (labels >= num_classes)).flatten()
    if bad.numel():
        row = int(bad[0])
        raise DataSourceError(
            f"{where}: {part}_y row {row} has label {int(labels[row])}, outside the "
            f"{num_classes} class names [0, {num_classes}) ({bad.numel()} such rows)"
        )


def check_pool(spec: str, pool: Any) -> None:
    """What a plug-in's own `open` gave: a CampaignPool whose ids are unique text, with
    non-empty text class names and initial ids drawn from the pool."""
    from baldflow.data.pool import CampaignPool

    where = f"data source {spec!r}"
    if not isinstance(pool, CampaignPool):
        raise DataSourceError(
            f"{where}: open() returned a {type(pool).__name__}, not a CampaignPool "
            f"(baldflow.data.MemoryPool or StreamedPool)"
        )
    ids = pool.pool_ids
    check_ids(spec, ids)
    check_class_names(spec, pool.class_names)
    known = set(ids)
    stray = next((i for i in pool.initial_ids if i not in known), None)
    if stray is not None:
        raise DataSourceError(f"{where}: initial id {short_repr(stray)} is not a pool id")
