"""Plug-ins: the one loader behind the four seams (models, data sources, trainers, strategies).

A campaign names a plug-in by a registered name (`mlp`, `digits`), by the name an installed
package gives it through a Python entry point (groups `baldflow.models`, `baldflow.sources`,
`baldflow.trainers`, `baldflow.strategies`), or by an import string `package.module:callable`.
`Registry.resolve` turns any of the three into a `Plugin`: the object, and the package, version
and code hash that a campaign records for its audit trail. baldflow's own built-ins register in
the same registries (the module that defines them calls `register` when it is imported), so a
plug-in and a built-in are found, checked and recorded the same way.

This module is on the ground floor: it imports nothing of baldflow. A registry learns where its
built-ins live as a module path and imports it on first use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import inspect
import re
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# An import string: dotted module path, a colon, a dotted attribute path.
_IMPORT_STRING_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
)
BUILTIN_PACKAGE = "baldflow"


class PluginError(ValueError):
    """A plug-in that cannot be found, imported or used; the message is one line naming the
    plug-in, the package that provides it and what is wrong."""

    def __init__(self, kind: str, spec: str, problem: str, *, package: str | None = None):
        where = f" (package {package})" if package else ""
        super().__init__(f"{kind} plug-in {spec!r}{where}: {problem}")
        self.kind = kind
        self.spec = spec
        self.package = package
        self.problem = problem


@dataclasses.dataclass(frozen=True)
class Plugin:
    """A resolved plug-in: what a campaign uses and what it records of it.

    `code_hash` is the sha256 of the source file that defines the object (None for baldflow's
    own built-ins, which baldflow's version pins, and for objects without a source file).
    """

    kind: str
    name: str
    obj: Any = dataclasses.field(compare=False, repr=False)
    package: str
    version: str
    code_hash: str | None
    origin: str  # "builtin", "registered", "entry point" or "import string"

    @property
    def builtin(self) -> bool:
        return self.origin == "builtin"

    def record(self) -> dict[str, Any]:
        """What a campaign records of the plug-in (campaign.yaml, every round's MLflow run): its
        name and package, and for a plug-in from outside baldflow its version and code hash. A
        built-in is recorded by name: it is baldflow's code, and a newer baldflow resumes the
        campaigns its built-ins began."""
        if self.builtin:
            return {"name": self.name, "package": self.package}
        return {
            "name": self.name,
            "package": self.package,
            "version": self.version,
            "code_hash": self.code_hash,
        }


def is_import_string(spec: Any) -> bool:
    """Whether `spec` has the form `package.module:callable`."""
    return isinstance(spec, str) and bool(_IMPORT_STRING_RE.match(spec))


def import_object(spec: str) -> Any:
    """The object an import string `package.module:attr.attr` names. ImportError (the module,
    or something it imports, does not import) or AttributeError (no such attribute)."""
    module_name, _, attrs = spec.partition(":")
    obj: Any = importlib.import_module(module_name)
    for attr in attrs.split("."):
        obj = getattr(obj, attr)
    return obj


def error_line(error: BaseException) -> str:
    """An exception as one line, `Type: first line of its message`: how a plug-in's own
    failure is quoted in the one-line errors that name the plug-in."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _definer(obj: Any) -> Any:
    """What defines `obj`: the object itself, or for an instance its class."""
    return type(obj) if _is_instance(obj) else obj


def _module_file(obj: Any) -> Path | None:
    """The source file of the module that defines `obj` (an instance: its class's)."""
    module = inspect.getmodule(_definer(obj))
    path = getattr(module, "__file__", None)
    return Path(path) if path else None


def _is_instance(obj: Any) -> bool:
    return not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj))


def code_hash(obj: Any) -> str | None:
    """sha256 of the source file that defines `obj`: a change to the plug-in's code (or to the
    helpers beside it in its module) changes the hash, and a campaign refuses to resume."""
    path = _module_file(obj)
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def distribution_of(module_name: str) -> tuple[str, str]:
    """(package, version) of the installed distribution that provides a top-level module, or
    ("", "") for a module that no installed distribution provides (a file on sys.path)."""
    top = module_name.split(".", 1)[0]
    names = importlib.metadata.packages_distributions().get(top) or []
    for name in names:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "", ""


def _baldflow_version() -> str:
    try:
        return importlib.metadata.version(BUILTIN_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Registry:
    """Names of one kind of plug-in, resolved to objects.

    `builtins_module` is imported on first use: it registers baldflow's own plug-ins of this
    kind with `register(..., builtin=True)`. `schemes` maps a prefix such as `torchvision` to
    a function that makes the plug-in of `prefix:rest` (tried before import strings).
    `adapt(obj, spec)` turns what a name resolves to into what the seam calls (e.g. a class
    into its instance) and raises PluginError when it does not keep the contract.
    """

    def __init__(self, kind: str, group: str, builtins_module: str):
        self.kind = kind
        self.group = group
        self.builtins_module = builtins_module
        self.schemes: dict[str, Callable[[str], Any]] = {}
        self._adapt: Callable[[Any, str], Any] | None = None
        self.contract = ""
        self._registered: dict[str, tuple[Any, bool]] = {}
        self._resolved: dict[str, Plugin] = {}
        self._lock = threading.RLock()
        self._loaded = False

    def set_adapter(self, adapt: Callable[[Any, str], Any], contract: str) -> None:
        """Set what checks and adapts every resolved object (the built-ins module calls this
        beside its `register` calls); `contract` is the one-line signature `baldflow plugins`
        shows."""
        self._adapt = adapt
        self.contract = contract
        self._resolved.clear()

    # ------------------------------------------------------------------ registering
    def register(self, name: str, obj: Any, *, replace: bool = False, builtin: bool = False):
        """Make `obj` known as `name` in this process. A name already taken is refused unless
        `replace=True`. Returns `obj`."""
        if not isinstance(name, str) or not name.strip():
            raise PluginError(self.kind, str(name), "a plug-in name must be non-empty text")
        with self._lock:
            if not builtin:
                self._load_builtins()
            if name in self._registered and not replace:
                raise PluginError(
                    self.kind, name, "the name is already registered; choose another name, or "
                    "pass replace=True to replace it",
                )  # fmt: skip
            self._registered[name] = (obj, builtin)
            self._resolved.pop(name, None)
        return obj

    def unregister(self, name: str) -> Any:
        with self._lock:
            self._load_builtins()
            if name not in self._registered:
                raise PluginError(self.kind, name, "is not registered")
            self._resolved.pop(name, None)
            return self._registered.pop(name)[0]

    def _load_builtins(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        importlib.import_module(self.builtins_module)

    # ------------------------------------------------------------------ looking up
    def registered_names(self) -> list[str]:
        with self._lock:
            self._load_builtins()
            return sorted(self._registered)

    def entry_points(self) -> list[importlib.metadata.EntryPoint]:
        return sorted(importlib.metadata.entry_points(group=self.group), key=lambda ep: ep.name)

    def names(self) -> list[str]:
        """Every name this registry answers to without an import string: registered here, or
        given by an installed package's entry point."""
        return sorted({*self.registered_names(), *(ep.name for ep in self.entry_points())})

    def knows(self, spec: Any) -> bool:
        """Whether `spec` names a plug-in of this kind, without importing anything new: a
        registered or entry-point name, a scheme's prefix, or the form of an import string."""
        if not isinstance(spec, str):
            return False
        if spec in self.names() or is_import_string(spec):
            return True
        scheme, sep, _ = spec.partition(":")
        return bool(sep) and scheme in self.schemes

    def resolve(self, spec: str) -> Plugin:
        """The plug-in `spec` names (cached per process), or PluginError in one line."""
        with self._lock:
            self._load_builtins()
            if spec in self._resolved:
                return self._resolved[spec]
            plugin = self._find(spec)
            self._resolved[spec] = plugin
            return plugin

    def _find(self, spec: str) -> Plugin:
        if not isinstance(spec, str) or not spec:
            raise PluginError(self.kind, str(spec), "a plug-in is named by non-empty text")
        if spec in self._registered:
            obj, builtin = self._registered[spec]
            obj = self._adapted(obj, spec, BUILTIN_PACKAGE if builtin else None)
            if builtin:
                return Plugin(
                    self.kind, spec, obj, BUILTIN_PACKAGE, _baldflow_version(), None, "builtin"
                )
            package, version = distribution_of(_defining_module(obj))
            return Plugin(self.kind, spec, obj, package, version, code_hash(obj), "registered")
        for ep in self.entry_points():
            if ep.name == spec:
                return self._from_entry_point(spec, ep)
        scheme, sep, rest = spec.partition(":")
        if sep and scheme in self.schemes:
            try:
                obj = self.schemes[scheme](rest)
            except PluginError:
                raise
            except Exception as error:  # noqa: BLE001 (a scheme's own error, shown in one line)
                raise PluginError(self.kind, spec, error_line(error)) from error
            package, version = distribution_of(scheme)
            obj = self._adapted(obj, spec, package)
            return Plugin(self.kind, spec, obj, package, version, code_hash(obj), "scheme")
        if is_import_string(spec):
            return self._from_import_string(spec)
        raise PluginError(self.kind, spec, self._unknown_hint(spec))

    def _unknown_hint(self, spec: str) -> str:
        import difflib

        names = self.names()
        close = difflib.get_close_matches(spec, names, n=1, cutoff=0.65)
        hint = f"; did you mean {close[0]}?" if close else ""
        schemes = "".join(f", or {s}:NAME" for s in sorted(self.schemes))
        return (
            f"is not a registered name, an installed entry point ({self.group}) or an import "
            f"string package.module:callable{hint} (names: {', '.join(names)}{schemes})"
        )

    def _from_entry_point(self, spec: str, ep: importlib.metadata.EntryPoint) -> Plugin:
        package, version = _distribution_of_entry_point(ep)
        try:
            obj = ep.load()
        except Exception as error:  # noqa: BLE001 (any import failure of a third-party package)
            raise PluginError(
                self.kind, spec,
                f"its entry point {ep.value} ({self.group}) does not load: {error_line(error)}",
                package=package or None,
            ) from error  # fmt: skip
        obj = self._adapted(obj, spec, package)
        return Plugin(self.kind, spec, obj, package, version, code_hash(obj), "entry point")

    def _from_import_string(self, spec: str) -> Plugin:
        module_name = spec.partition(":")[0]
        package, version = distribution_of(module_name)
        try:
            obj = import_object(spec)
        except Exception as error:  # noqa: BLE001 (whatever the user's module raises on import)
            raise PluginError(
                self.kind, spec, f"does not import: {error_line(error)}", package=package or None
            ) from error
        obj = self._adapted(obj, spec, package)
        return Plugin(self.kind, spec, obj, package, version, code_hash(obj), "import string")

    def _adapted(self, obj: Any, spec: str, package: str | None) -> Any:
        if self._adapt is None:
            return obj
        try:
            return self._adapt(obj, spec)
        except PluginError as error:
            if error.package is None and package:
                raise PluginError(self.kind, spec, error.problem, package=package) from error
            raise

    def listing(self) -> Iterator[dict[str, Any]]:
        """One row per name (registered and entry points): name, package, version, origin;
        `problem` holds the one-line reason when an entry point does not load."""
        for name in self.names():
            try:
                plugin = self.resolve(name)
            except PluginError as error:
                ep = next((e for e in self.entry_points() if e.name == name), None)
                package, version = _distribution_of_entry_point(ep)
                yield {
                    "kind": self.kind, "name": name, "package": package, "version": version,
                    "origin": "entry point", "problem": error.problem,
                }  # fmt: skip
                continue
            yield {
                "kind": self.kind, "name": name, "package": plugin.package,
                "version": plugin.version, "origin": plugin.origin, "problem": "",
            }  # fmt: skip
        for scheme in sorted(self.schemes):
            package, version = distribution_of(scheme)
            yield {
                "kind": self.kind, "name": f"{scheme}:NAME", "package": package,
                "version": version, "origin": "scheme", "problem": "",
            }  # fmt: skip


def _defining_module(obj: Any) -> str:
    return getattr(_definer(obj), "__module__", "") or ""


def _distribution_of_entry_point(ep: importlib.metadata.EntryPoint | None) -> tuple[str, str]:
    """(package, version) of the installed distribution that declares `ep`, or ("", "")."""
    dist = getattr(ep, "dist", None)
    return (dist.name, dist.version) if dist is not None else ("", "")


def forget_entry_point_cache() -> None:
    """Drop importlib's cached view of installed packages (after installing one at run time,
    e.g. in a test); resolutions already made stay."""
    importlib.invalidate_caches()
    sys.path_importer_cache.clear()


# The four seams. Each registry's built-ins module registers baldflow's own plug-ins and the
# adapter that checks what a name resolves to against the seam's contract.
MODEL_PLUGINS = Registry("model", "baldflow.models", "baldflow.models.building")
SOURCE_PLUGINS = Registry("source", "baldflow.sources", "baldflow.data.registry")
TRAINER_PLUGINS = Registry("trainer", "baldflow.trainers", "baldflow.training")
STRATEGY_PLUGINS = Registry("strategy", "baldflow.strategies", "baldflow.acquisition.strategies")
REGISTRIES: dict[str, Registry] = {
    registry.kind: registry
    for registry in (MODEL_PLUGINS, SOURCE_PLUGINS, TRAINER_PLUGINS, STRATEGY_PLUGINS)
}
