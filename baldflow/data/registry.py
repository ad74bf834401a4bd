"""baldflow's built-in data sources, registered in `baldflow.plugins.SOURCE_PLUGINS`, and the
adapter that makes whatever a source name resolves to (class, instance, function) a DataSource."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from baldflow.data.disk_source import DISK_SOURCE, open_disk_source
from baldflow.data.pool_formats import cached_manifest
from baldflow.data.repeat import REPEAT_SEPARATOR, initial_then_repeat
from baldflow.data.source import (
    DataSource,
    FunctionSource,
    SourceParams,
    keyword_options,
    load_with_options,
)
from baldflow.data.source_checks import (
    check_cifar10,
    check_disk_source,
    check_fashion_mnist,
    check_folder,
    check_mnist,
    check_npz,
)
from baldflow.data.sources import DEFAULT_SOURCE, SOURCES
from baldflow.data.splits import DataSourceError, DataSplits
from baldflow.data.streamed_pool import StreamedPool
from baldflow.plugins import SOURCE_PLUGINS, PluginError, error_line, is_import_string

CONTRACT = (
    "a DataSource (subclass or instance: load(root, *, seed, **options) -> DataSplits, or "
    "open(params) -> CampaignPool) or a function load(root, *, seed, **options) -> DataSplits"
)


class BuiltinSource(FunctionSource):
    """An in-memory built-in: its loader (`baldflow.data.sources`) checks ids and class names
    as it assembles the splits (`_finish`), so the plug-in checks would only repeat them."""

    checked_by_loader: ClassVar[bool] = True


class FolderSource(BuiltinSource):
    """The image-folder source: an item to label is its image file."""

    def describe_item(self, root: str | None, sample_id: str) -> str:
        if not root:
            return super().describe_item(root, sample_id)
        # Folder ids are paths relative to root; a repeated copy "<id>~r<c>" names its origin.
        origin = sample_id.split(REPEAT_SEPARATOR, 1)[0]
        return str(Path(root) / origin)


class DiskDirectorySource(DataSource):
    """The disk source: `root` holds pool/, val/ and test/ (`baldflow.data.disk_source`); the
    pool is read by rows, never loaded, and its ids are looked up on disk."""

    name = DISK_SOURCE
    streamed = True
    # open_disk_source checks the parts' ids, class names and labels as it opens them.
    checked_by_loader: ClassVar[bool] = True

    def open(self, params: SourceParams) -> StreamedPool:
        if params.root is None:
            raise DataSourceError(
                "data.source 'disk' needs data.root: a directory with pool/, val/ and test/ "
                "(python benchmarks/make_pool.py --campaign-source --out DIR builds one)"
            )
        if params.repeat != 1 or params.noise_std != 0.0 or params.options:
            raise DataSourceError(
                "data.source 'disk' reads the pool as written: data.repeat, data.noise_std and "
                "data.options do not apply (write the variant you want as its own pool)"
            )
        source = open_disk_source(
            params.root, initial_per_class=params.initial_per_class, seed=params.seed
        )
        # What every round versions: the pool's manifest, and val's and test's under
        # `held_out` (preflight.check_pool_unchanged holds a resumed campaign to all three).
        return StreamedPool(source, {**cached_manifest(source.pool), "held_out": source.held_out})

    def accepted_options(self) -> list[str]:
        return []

    def preflight(self, root: Path | None, options: Mapping[str, Any]) -> None:
        check_disk_source(root, options)


class _Delegate(DataSource):
    """A plug-in object that keeps the contract without subclassing DataSource (its package
    need not import baldflow to define it): each method it has is used, DataSource's otherwise."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.name = str(getattr(target, "name", "") or "")
        self.streamed = bool(getattr(target, "streamed", False))

    def _own(self, method: str) -> Any:
        found = getattr(self.target, method, None)
        return found if callable(found) else None

    def load(self, root: str | None, *, seed: int, **options: Any) -> DataSplits:
        own = self._own("load")
        return own(root, seed=seed, **options) if own else super().load(root, seed=seed)

    def open(self, params: SourceParams) -> Any:
        own = self._own("open")
        return own(params) if own else super().open(params)

    def accepted_options(self) -> list[str]:
        own = self._own("accepted_options")
        if own:
            return list(own())
        load = self._own("load")
        return keyword_options(load) if load else []

    def preflight(self, root: Path | None, options: Mapping[str, Any]) -> None:
        own = self._own("preflight")
        if own:
            own(root, options)

    def describe_item(self, root: str | None, sample_id: str) -> str:
        own = self._own("describe_item")
        return str(own(root, sample_id)) if own else super().describe_item(root, sample_id)


def _has_seam(obj: Any) -> bool:
    return callable(getattr(obj, "load", None)) or callable(getattr(obj, "open", None))


def adapt(obj: Any, spec: str) -> DataSource:
    """The DataSource that `obj` (what `spec` resolved to) stands for: a DataSource subclass
    (or any class with load/open) instantiated with no arguments, an instance as it is, a
    plain function `load(root, *, seed, **options)` wrapped. PluginError when it is none."""
    if inspect.isclass(obj):
        if not (issubclass(obj, DataSource) or _has_seam(obj)):
            raise PluginError(
                "source", spec, f"the class {obj.__qualname__} is not a DataSource: it has "
                f"neither load(root, *, seed, **options) nor open(params); expected {CONTRACT}",
            )  # fmt: skip
        try:
            obj = obj()
        except Exception as error:  # noqa: BLE001 (whatever a plug-in's constructor raises)
            raise PluginError(
                "source", spec, f"{obj.__qualname__}() fails: {error_line(error)} (a source "
                f"class is made with no arguments; pass an instance to take any)",
            ) from error  # fmt: skip
    if isinstance(obj, DataSource):
        source = obj
        kind = type(source)
        if kind.load is DataSource.load and kind.open is DataSource.open:
            raise PluginError(
                "source", spec, f"{kind.__qualname__} implements neither "
                f"load(root, *, seed, **options) nor open(params)",
            )  # fmt: skip
    elif _has_seam(obj):
        source = _Delegate(obj)
    elif callable(obj):
        _check_loader(obj, spec)
        source = FunctionSource(obj)
    else:
        raise PluginError(
            "source", spec, f"is a {type(obj).__name__} with neither "
            f"load(root, *, seed, **options) nor open(params); expected {CONTRACT}",
        )  # fmt: skip
    if not source.name:
        source.name = spec
    return source


def _check_loader(function: Any, spec: str) -> None:
    """A loader function must take (root, *, seed=...): found now, not at the first round."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # no signature to read (a C function): the call itself will tell
    try:
        signature.bind(None, seed=0)
    except TypeError as error:
        raise PluginError(
            "source", spec, f"the function {getattr(function, '__qualname__', function)}"
            f"{signature} cannot be called as load(root, *, seed): {error}",
        ) from None  # fmt: skip


# The built-ins, with the preflight check of each in-memory source's files.
_CHECKS = {
    "mnist": check_mnist,
    "fashion-mnist": check_fashion_mnist,
    "cifar10": check_cifar10,
    "npz": check_npz,
    "folder": check_folder,
}
for _name, _loader in SOURCES.items():
    _kind = FolderSource if _name == "folder" else BuiltinSource
    SOURCE_PLUGINS.register(
        _name, _kind(_loader, name=_name, check=_CHECKS.get(_name)), builtin=True, replace=True
    )
SOURCE_PLUGINS.register(DISK_SOURCE, DiskDirectorySource(), builtin=True, replace=True)
SOURCE_PLUGINS.set_adapter(adapt, contract=CONTRACT)


def data_source(spec: str) -> DataSource:
    """The DataSource `spec` names: a registered name, an entry point of group
    `baldflow.sources`, or an import string `package.module:attr` (PluginError otherwise)."""
    return SOURCE_PLUGINS.resolve(spec).obj


def source_names() -> list[str]:
    """Every source name known without an import string (built-ins, registered, entry points)."""
    return SOURCE_PLUGINS.names()


def source_streams(spec: str) -> bool:
    """Whether the source `spec` names is streamed (its pool read from disk by rows, scored
    shard by shard). PluginError when `spec` names no source."""
    return bool(data_source(spec).streamed)


def load_source(
    name: str = DEFAULT_SOURCE, *, root: str | None = None, seed: int = 0, **options
) -> DataSplits:
    """Load data source `name` with a split fixed by `seed`: a built-in (see SOURCES) or any
    in-memory source the registry resolves (`baldflow.data.registry.data_source`). Options are
    the keyword arguments of the source's loader (val_size, pool_size, normalize, download, ...)."""
    try:
        source = data_source(name)
    except PluginError:
        if is_import_string(name) or name in SOURCE_PLUGINS.names():
            raise  # its own one-line reason (does not import, not a source, ...)
        valid = [n for n in SOURCE_PLUGINS.names() if not _streams(n)]
        raise DataSourceError(
            f"unknown data source {name!r}; valid names: {', '.join(valid)}"
        ) from None
    return load_with_options(source, root, seed, options)


def _streams(name: str) -> bool:
    """Whether a listed name is streamed; a plug-in that does not load counts as streamed here,
    so the list of names to load stays free of it."""
    try:
        return source_streams(name)
    except PluginError:
        return True


def prepare_pool(
    source: str | DataSplits,
    *,
    repeat: int = 1,
    noise_std: float = 0.0,
    initial_per_class: int = 2,
    seed: int = 0,
    root: str | None = None,
    **options,
) -> tuple[DataSplits, list[str]]:
    """Load `source` (a name the source registry resolves, `load_source`), choose the balanced
    initial labeled set (initial_per_class per class) BEFORE repetition, then repeat the pool.
    Returns the splits and the initial sample ids, all of which are pool ids of copy 0."""
    if isinstance(source, DataSplits):
        splits = source
    else:
        splits = load_source(source, root=root, seed=seed, **options)
    return initial_then_repeat(
        splits,
        repeat=repeat,
        noise_std=noise_std,
        initial_per_class=initial_per_class,
        seed=seed,
    )
