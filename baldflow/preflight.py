"""Checks that a campaign can run here, made before any server, lock or workspace is touched.

A problem found later (inside the flow) costs a Prefect server start, a page of tracebacks and
an MLflow run left RUNNING; found here it is one line with the `--set` that fixes it.
"""

from __future__ import annotations

import inspect
import os
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baldflow.config import Config, ConfigError, check_registry_names, nearest, read_yaml

if TYPE_CHECKING:
    from baldflow.labeling.label_studio import WorkspaceServer

# Seconds to wait for a tracking server: long enough for a server across a LAN, short enough
# that a wrong address fails the command at once instead of after the first round's training.
TRACKING_TIMEOUT_S = 3.0

# Ports of the database URIs MLflow accepts as tracking URIs, when the URI names none.
_DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}

# The four IDX files of the MNIST family, as the loaders in baldflow.data.sources look for them.
_IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")

# Keyword arguments that prepare_pool and load_source pass themselves, from their own fields:
# the same name in data.options would collide with them at load time.
_OPTION_OWNERS = {
    "root": "data.root",
    "seed": "campaign.seed",
    "repeat": "data.repeat",
    "noise_std": "data.noise_std",
    "initial_per_class": "campaign.initial_per_class",
}


class PreflightError(RuntimeError):
    """This machine cannot run the campaign as configured; one line with the problem and fix."""


def check(
    config: Config, workspace_root: str | Path, workspace_server: WorkspaceServer | None = None
) -> None:
    """Raise on the first thing that would make the campaign fail after it started.

    Cheapest first, the network last. ConfigError for parameters that contradict the
    workspace's record of the campaign, PreflightError for what this machine lacks.
    workspace_server: the workspace's own Label Studio server, from the caller that runs servers
    (baldflow.labeling.label_studio.connect says what it is); the `label-studio` oracle without
    a url needs it.
    """
    root = Path(workspace_root)
    # Callers may have validated without the registries (check_names=False): names again.
    check_registry_names(config)
    check_campaign(config, root)
    check_device(config.training.device)
    check_data(config)
    check_scale(config)
    check_tracking(config.tracking.mlflow_uri, root)
    check_git_remote(root)
    check_label_studio(config, root, workspace_server)


def check_label_studio(
    config: Config, workspace_root: Path, workspace_server: WorkspaceServer | None = None
) -> None:
    """The `label-studio` oracle's server answers and takes the token, before a round is
    computed for it."""
    if config.oracle.kind != "label-studio":
        return
    from baldflow.labeling.label_studio import LabelStudioClient, LabelStudioError, connect

    def not_given() -> tuple[str, str, Path]:
        raise LookupError(f"no way to find the Label Studio server of {workspace_root} was given")

    try:
        connection = connect(config.oracle.label_studio, workspace_server or not_given)
        LabelStudioClient(connection, 15.0).whoami()
    except LabelStudioError as exc:
        raise PreflightError(f"oracle.kind is label-studio, but {exc}") from None


def check_scale(config: Config) -> None:
    """Dask scoring needs the `dask` extra, and a standing cluster that answers."""
    scale = config.scale
    if scale.runner != "dask":
        return
    try:
        import prefect_dask  # noqa: F401
    except ImportError as error:
        raise PreflightError(
            f"scale.runner is dask but prefect-dask is not installed ({error}); fix: pip "
            "install -e '.[dask]' (in the same command as the project, see the README), or "
            "--set scale.runner=local"
        ) from error
    if scale.dask_address is None:
        return
    parsed = urllib.parse.urlsplit(scale.dask_address)
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=TRACKING_TIMEOUT_S):
            pass
    except OSError as error:
        raise PreflightError(
            f"the Dask scheduler at scale.dask_address {scale.dask_address} does not answer "
            f"({error}); fix: start it (dask scheduler --host 127.0.0.1 --port {parsed.port}) "
            "and its workers, or unset scale.dask_address for a temporary local cluster"
        ) from error


def check_git_remote(workspace_root: Path) -> None:
    """A shared workspace claims each round by pushing to its git remote: one that does not
    answer would stop the run at its first round, after the servers started."""
    from baldflow.workspace import Workspace
    from baldflow.workspace import remote as remote_mod

    if not Workspace.is_workspace(workspace_root):
        return
    ws = Workspace(workspace_root)
    url = remote_mod.remote_url(ws)
    if url is None:
        return
    problem = remote_mod.unreachable(ws)
    if problem:
        raise PreflightError(
            f"the workspace's git remote {url} does not answer ({problem}); fix: check the URL "
            f"(git -C {workspace_root} remote -v) and your access to it, then run again: a "
            "shared workspace claims each round by pushing there"
        )


# ---------------------------------------------------------------------------- campaign
def recorded_identity(workspace_root: str | Path, campaign: str) -> dict[str, Any]:
    """What campaign `campaign` recorded of itself (Config.record(): its identity, length and
    tracking), from its campaign.yaml; for a campaign whose round 0 is still out for labels
    (nothing committed, so no campaign.yaml yet), from the parameters its batch was handed out
    with.

    LookupError listing the workspace's campaigns when it has no such campaign.
    """
    from baldflow.labeling import pending_batches
    from baldflow.workspace import Workspace
    from baldflow.workspace.repo import CAMPAIGN_FILE

    root = Path(workspace_root)
    start = f"start it with: baldflow run --workspace {root} --set campaign.name={campaign}"
    if not Workspace.is_workspace(root):
        raise LookupError(f"{root} is not a baldflow workspace, so it has no campaign; {start}")
    workspace = Workspace(root)
    path = workspace.campaign_dir(campaign) / CAMPAIGN_FILE
    if not path.is_file():
        out = {handoff.campaign: pending for handoff, pending in pending_batches(root)}
        if campaign in out:
            from baldflow.config import validate

            # The run that started the campaign handed round 0 out with its full parameters.
            return validate(dict(out[campaign].params), check_names=False).record()
        names = sorted(
            {
                *(
                    name
                    for name in workspace.campaigns()
                    if (workspace.campaign_dir(name) / CAMPAIGN_FILE).is_file()
                ),
                *out,
            }
        )
        guess = nearest(campaign, names)
        hint = f"did you mean --campaign {guess}? or " if guess else ""
        known = ", ".join(names) or "none yet"
        raise LookupError(
            f"campaign {campaign!r} is not in {root} (campaigns: {known}); {hint}{start}"
        )
    return read_yaml(path)


def check_campaign(config: Config, workspace_root: Path) -> None:
    """Refuse parameters that change what a campaign with completed rounds acquires.

    Only a campaign with a completed round is judged here: a campaign.yaml without one is
    what an interrupted round 0 left, which the flow's recovery discards (and the flow checks
    again after recovering).
    """
    from baldflow.workspace import Workspace

    if not Workspace.is_workspace(workspace_root):
        return
    workspace = Workspace(workspace_root)
    name = config.campaign.name
    if not workspace.completed_rounds(name):
        return
    try:
        workspace.check_campaign_params(name, config.identity())
    except ConfigError as exc:
        raise ConfigError(
            f"{exc}; to resume it as recorded: baldflow run --workspace {workspace_root} "
            f"--campaign {name}"
        ) from None


# ---------------------------------------------------------------------------- device
def check_device(device: str) -> None:
    """A device this machine has: cuda without a CUDA device fails before any work."""
    if device == "auto":
        return
    import torch

    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"training.device must be auto, cpu, cuda, cuda:N or mps, got {device!r}; "
            "fix: --set training.device=auto",
            fields=("training.device",),
        ) from None
    fallback = "--set training.device=cpu (or auto: CUDA where there is one, else the CPU)"
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise PreflightError(
                f"training.device is {device!r} but torch finds no CUDA device here (torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda}); fix: {fallback}"
            )
        count = torch.cuda.device_count()
        if chosen.index is not None and chosen.index >= count:
            have = "only cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise PreflightError(
                f"training.device is {device!r} but this machine has {have}; "
                "fix: --set training.device=cuda:0"
            )
    elif chosen.type == "mps":
        if not torch.backends.mps.is_available():
            raise PreflightError(
                f"training.device is {device!r} but torch finds no MPS device here; fix: {fallback}"
            )
    elif chosen.type != "cpu":
        raise PreflightError(
            f"training.device is {device!r}, a device baldflow does not train on "
            f"(auto, cpu, cuda, cuda:N, mps); fix: {fallback}"
        )


# ---------------------------------------------------------------------------- data
def check_data(config: Config) -> None:
    """The data source's options exist and its files are where it will look for them."""
    from baldflow.data import DISK_SOURCE, SOURCES

    source = config.data.source
    if source == DISK_SOURCE:
        _check_disk_source(config.data.root)
        return
    options = dict(config.data.options)
    _check_options(source, SOURCES[source], options)
    root = Path(config.data.root).expanduser() if config.data.root else None
    checker = _DATA_CHECKS.get(source)
    if checker is not None:
        checker(root, options)


def _check_disk_source(root: str | None) -> None:
    """A pool on disk: DIR/pool, DIR/val and DIR/test, each a finished pool directory
    (pool.json written), an image folder of class folders, or DIR/<part>.npz."""
    build = "python benchmarks/make_pool.py --campaign-source --out DIR builds one"
    if root is None:
        raise PreflightError(f"data.source disk needs data.root=DIR; {build}")
    base = Path(root).expanduser()
    missing = [part for part in ("pool", "val", "test") if not _disk_part_ready(base, part)]
    if missing:
        raise PreflightError(
            f"data.root {base} lacks a finished pool in {', '.join(f'{m}/' for m in missing)} "
            f"(each a directory with pool.json, x.npy, y.npy, ids.txt, an image folder "
            f"<part>/<class>/<image>, or a <part>.npz saved with np.savez); {build}"
        )


def _disk_part_ready(base: Path, part: str) -> bool:
    """Where the disk source finds the part (`part_path`), ready to open: an .npz, a pool
    directory once its pool.json is written, or a folder of class folders without x.npy (an
    image folder: its images are checked when the campaign opens it)."""
    from baldflow.data.disk_source import part_path

    path = part_path(base, part)
    if path is None:
        return False
    if path.is_file() or (path / "pool.json").is_file():
        return True
    return not (path / "x.npy").exists() and any(p.is_dir() for p in path.iterdir())


def _check_options(source: str, loader: Any, options: Mapping[str, Any]) -> None:
    accepted = [
        name
        for name, parameter in inspect.signature(loader).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in _OPTION_OWNERS
    ]
    for key, value in options.items():
        if key in _OPTION_OWNERS:
            owner = _OPTION_OWNERS[key]
            raise ConfigError(
                f"data.options.{key} duplicates the parameter {owner}; fix: drop it from "
                f"data.options and use --set {owner}={_cli(value)}",
                fields=(f"data.options.{key}",),
            )
        if key not in accepted:
            guess = nearest(key, accepted)
            hint = f"did you mean --set data.options.{guess}={_cli(value)}? " if guess else ""
            raise ConfigError(
                f"data.options.{key} is not an option of data source {source!r} (got {value!r}); "
                f"{hint}(options of {source}: {', '.join(accepted) or 'none'})",
                fields=(f"data.options.{key}",),
            )


def _cli(value: Any) -> str:
    """A value as `--set` reads it back (YAML): true, not Python's True."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("...").strip()


def _idx_file(directory: Path, stem: str) -> bool:
    return (directory / f"{stem}.gz").is_file() or (directory / stem).is_file()


def _missing_idx(directory: Path) -> list[str]:
    return [stem for stem in _IDX_STEMS if not _idx_file(directory, stem)]


def _fetch_fix(name: str, root: Path | str) -> str:
    return f"--set data.root={root} --set data.options.download=true (torchvision fetches {name})"


def _check_download_target(source: str, root: Path) -> None:
    problem = _unwritable(root)
    if problem:
        raise PreflightError(
            f"data.source {source!r} with data.options.download=true writes to data.root "
            f"{str(root)!r}, but {problem}; fix: --set data.root=<a writable directory>"
        )


def _check_mnist(root: Path | None, options: Mapping[str, Any]) -> None:
    layout = (
        "DIR/MNIST/raw/train-images-idx3-ubyte and the three other IDX files, or the four "
        "IDX files (gzipped or not) in DIR itself"
    )
    if root is None:
        raise PreflightError(
            f"data.source 'mnist' reads its files from data.root, which is not set; fix: "
            f"--set data.root=DIR ({layout}), or to fetch them: {_fetch_fix('MNIST', 'DIR')}"
        )
    if options.get("download"):
        _check_download_target("mnist", root)
        return
    # The loader reads IDX files from root itself when the first is there, torchvision's
    # layout (raw files, or the legacy processed/*.pt) otherwise.
    if _idx_file(root, _IDX_STEMS[0]):
        missing = _missing_idx(root)
        if missing:
            raise PreflightError(
                f"MNIST is incomplete in data.root {str(root)!r}: missing "
                f"{', '.join(s + '[.gz]' for s in missing)}; fix: put them there, or "
                f"{_fetch_fix('MNIST', '<an empty directory>')}"
            )
        return
    raw = root / "MNIST" / "raw"
    processed = root / "MNIST" / "processed"
    if all((raw / stem).is_file() for stem in _IDX_STEMS):
        return
    if (processed / "training.pt").is_file() and (processed / "test.pt").is_file():
        return
    raise PreflightError(
        f"MNIST not found in data.root {str(root)!r} (looked for {layout}); fix: "
        f"{_fetch_fix('MNIST', root)}, or --set data.root=<the directory that holds it>"
    )


def _check_fashion_mnist(root: Path | None, options: Mapping[str, Any]) -> None:
    from baldflow.data.sources import FASHION_MNIST_ROOT

    directory = root or Path(FASHION_MNIST_ROOT)
    missing = _missing_idx(directory)
    if missing:
        where = "data.root" if root else "data.root unset, so the default"
        raise PreflightError(
            f"Fashion-MNIST not found in {str(directory)!r} ({where}; missing "
            f"{', '.join(s + '[.gz]' for s in missing)}); fix: --set data.root=<directory "
            f"holding the four IDX files>, or install them at {FASHION_MNIST_ROOT} with "
            f"apt-get install dataset-fashion-mnist"
        )


def _check_cifar10(root: Path | None, options: Mapping[str, Any]) -> None:
    layout = "DIR/cifar-10-batches-py/data_batch_1 ... test_batch, batches.meta"
    if root is None:
        raise PreflightError(
            f"data.source 'cifar10' reads its files from data.root, which is not set; fix: "
            f"--set data.root=DIR ({layout}), or to fetch them: {_fetch_fix('CIFAR-10', 'DIR')}"
        )
    if options.get("download"):
        _check_download_target("cifar10", root)
        return
    batches = root / "cifar-10-batches-py"
    missing = [name for name in _CIFAR_FILES if not (batches / name).is_file()]
    if missing:
        raise PreflightError(
            f"CIFAR-10 not found in data.root {str(root)!r} (missing {', '.join(missing)} in "
            f"{batches}); fix: {_fetch_fix('CIFAR-10', root)}, or --set data.root=<the "
            f"directory holding cifar-10-batches-py/>"
        )


def _check_npz(root: Path | None, options: Mapping[str, Any]) -> None:
    given = options.get("path")
    file = Path(given).expanduser() if given else root
    field = "data.options.path" if given else "data.root"
    if file is None:
        raise PreflightError(
            "data.source 'npz' reads one .npz file named by data.root, which is not set; "
            "fix: --set data.root=FILE.npz"
        )
    if not file.is_file():
        raise PreflightError(
            f"data.source 'npz' reads {field} {str(file)!r}, which is not a file; fix: "
            f"--set {field}=FILE.npz (X [N, ...] and y [N] arrays)"
        )


def _check_folder(root: Path | None, options: Mapping[str, Any]) -> None:
    layout = "DIR/<class>/<image>, or DIR/train/<class>/ and DIR/test/<class>/"
    if root is None:
        raise PreflightError(
            f"data.source 'folder' reads images from data.root, which is not set; fix: "
            f"--set data.root=DIR ({layout})"
        )
    if not root.is_dir():
        raise PreflightError(
            f"data.source 'folder' reads images from data.root {str(root)!r}, which is not a "
            f"directory; fix: --set data.root=DIR ({layout})"
        )
    if not _has_an_image(root):
        from baldflow.data.sources import IMAGE_SUFFIXES

        raise PreflightError(
            f"data.root {str(root)!r} holds no images in class folders ({layout}; suffixes "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}); fix: --set data.root=<such a directory>"
        )


def _has_an_image(directory: Path) -> bool:
    """Whether the tree has one image in a class folder; stops at the first (trees are big)."""
    from baldflow.data.sources import IMAGE_SUFFIXES

    classes = [p for p in directory.iterdir() if p.is_dir()]
    for class_dir in classes:
        for path in class_dir.rglob("*"):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                return True
    return False


_DATA_CHECKS = {
    "mnist": _check_mnist,
    "fashion-mnist": _check_fashion_mnist,
    "cifar10": _check_cifar10,
    "npz": _check_npz,
    "folder": _check_folder,
}


# ---------------------------------------------------------------------------- tracking
def check_tracking(uri: str | None, workspace_root: Path) -> None:
    """The MLflow store can be written (SQLite, files) or answers (a server, a database)."""
    local = "--set tracking.mlflow_uri=null (the workspace's own store)"
    if not uri:
        store = workspace_root / "mlflow"
        problem = _unwritable(store)
        if problem:
            raise PreflightError(
                f"the workspace's MLflow store {str(store)!r} cannot be written: {problem}; "
                "fix: --workspace <a writable directory>, or --set "
                "tracking.mlflow_uri=sqlite:////<writable dir>/mlflow.db"
            )
        return
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        _check_server(uri, local)
    elif scheme == "sqlite":
        # sqlite:///relative.db, sqlite:////absolute.db; sqlite:// alone is in memory.
        path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
        if path and path != ":memory:":
            problem = _unwritable(Path(path).expanduser().parent)
            if problem:
                raise PreflightError(
                    f"tracking.mlflow_uri {uri!r}: the SQLite database cannot be created "
                    f"there, {problem}; fix: --set tracking.mlflow_uri=sqlite:////<writable "
                    f"dir>/mlflow.db, or {local}"
                )
    elif scheme in ("", "file"):
        path = parts.path if scheme == "file" else uri
        problem = _unwritable(Path(path).expanduser())
        if problem:
            raise PreflightError(
                f"tracking.mlflow_uri {uri!r} cannot be written: {problem}; fix: {local}"
            )
    else:
        base = scheme.split("+", 1)[0]
        if base in _DATABASE_PORTS and parts.hostname:
            _check_port(uri, parts.hostname, parts.port or _DATABASE_PORTS[base], local)


def _check_server(uri: str, local: str) -> None:
    """An MLflow server answers on /health (authentication, if any, does not cover it)."""
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=TRACKING_TIMEOUT_S):
            _check_credentials(uri)
            return
    except urllib.error.HTTPError as exc:
        # Any answer below 500 is a server that is up (a proxy in front may refuse /health);
        # 5xx is a proxy whose MLflow behind it is down.
        if exc.code < 500:
            return
        reason = f"it answered {exc.code} {exc.reason} on {health}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        cause = getattr(exc, "reason", exc)
        reason = f"{health} does not answer ({cause})"
    raise PreflightError(
        f"tracking.mlflow_uri {uri!r} is not reachable: {reason}; fix: start the server "
        f"(mlflow server --host HOST --port PORT), or {local}"
    )


def _check_credentials(uri: str) -> None:
    """A server with MLflow's basic-auth app answers 401 to a client without a user: say so
    now, in one line, rather than as a traceback from the first run the campaign logs."""
    import base64

    probe = uri.rstrip("/") + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
    request = urllib.request.Request(probe)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {pair}")
    elif token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TRACKING_TIMEOUT_S):
            return
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            return  # 404 (no Default experiment) and the like: the server took the request
    except (urllib.error.URLError, OSError, ValueError):
        return  # /health answered; let the run report whatever this is
    who = f"the user {user!r} with the password given" if user else "no credentials"
    raise PreflightError(
        f"tracking.mlflow_uri {uri!r} requires a login and refused {who} (401); fix: export "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (your MLflow user; ask the "
        "team's MLflow admin for one)"
    )


def _check_port(uri: str, host: str, port: int, local: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=TRACKING_TIMEOUT_S):
            return
    except OSError as exc:
        raise PreflightError(
            f"tracking.mlflow_uri {uri!r}: the database at {host}:{port} does not answer "
            f"({exc}); fix: start it, or {local}"
        ) from None


def _unwritable(directory: Path) -> str | None:
    """Why files cannot be created in `directory` (made if missing), or None if they can.

    The nearest existing ancestor is probed by creating a file in it: permission bits say
    nothing to root, and a read-only mount only shows on writing.
    """
    directory = directory.absolute()
    existing = directory
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{str(existing)!r} is not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".baldflow-preflight-"):
            pass
    except OSError as exc:
        return f"{str(existing)!r} is not writable ({exc.strerror or exc})"
    return None
