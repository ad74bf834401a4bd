"""Checks that a campaign can run here, made before any server, lock or workspace is touched.

A problem found later (inside the flow) costs a Prefect server start, a page of tracebacks and
an MLflow run left RUNNING; found here it is one line with the `--set` that fixes it.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baldflow.config import (
    Config,
    ConfigError,
    campaign_identity,
    check_registry_names,
    check_strategy,
    nearest,
    read_yaml,
    registered_model_name,
)
from baldflow.data.source_checks import unwritable

if TYPE_CHECKING:
    from baldflow.labeling.label_studio import WorkspaceServer

# Seconds to wait for a tracking server: long enough for a server across a LAN, short enough
# that a wrong address fails the command at once instead of after the first round's training.
TRACKING_TIMEOUT_S = 3.0

# Ports of the database URIs MLflow accepts as tracking URIs, when the URI names none.
_DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


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
    check_plugins(config)
    check_campaign(config, root)
    check_device(config.training.device)
    check_data(config)
    check_pool_unchanged(config, root)
    check_scale(config)
    check_staging(config)
    check_tracking(config.tracking.mlflow_uri, root)
    check_tracking_permissions(config)
    check_git_remote(root)
    check_label_studio(config, root, workspace_server)


def check_plugins(config: Config) -> None:
    """Every plug-in the campaign names imports and keeps its seam's contract as far as can be
    told without data (a model's outputs are checked once the data's shape is known, before
    the first round), and a weights file is there and safe to read."""
    from baldflow.config import plugin_record
    from baldflow.models.weights import WeightsError, read_pretrained
    from baldflow.plugins import PluginError

    try:
        plugin_record(config)
    except PluginError as error:
        raise PreflightError(str(error)) from None
    except (WeightsError, OSError) as error:
        raise PreflightError(f"model.weights: {error}") from None
    # A plug-in strategy's parameter checks (config validation leaves plug-ins unimported).
    check_strategy(config)
    if config.model.weights is not None:
        try:
            read_pretrained(config.model.weights)
        except WeightsError as error:
            raise PreflightError(f"model.weights: {error}") from None


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


def check_staging(config: Config) -> None:
    """`scale.staging` must take a write and a delete from this host: the flow stages each
    round's model there after training, and a store that refuses would end the first round
    only then. One small probe object, written and deleted (two requests a run)."""
    import secrets

    from baldflow.config import scores_in_shards
    from baldflow.data import object_store
    from baldflow.data.object_store import ObjectStoreError, ObjectURL

    if config.scale.staging is None or not scores_in_shards(config):
        return
    probe = ObjectURL.parse(config.scale.staging) / f".baldflow-probe-{secrets.token_hex(6)}"
    try:
        object_store.call(
            probe, "writing", lambda: object_store.client().put_object(
                Bucket=probe.bucket, Key=probe.key, Body=b"baldflow preflight: safe to delete\n"
            ),
        )  # fmt: skip
        object_store.delete(probe)
    except ObjectStoreError as error:
        raise PreflightError(
            f"scale.staging {config.scale.staging} cannot be written: {error}; fix: create "
            "the bucket or grant these credentials write and delete there, or unset "
            "scale.staging (workers on a shared filesystem)"
        ) from None


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
        workspace.check_campaign_params(name, campaign_identity(config))
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
    """The data source resolves, its options exist and its files are where it will look for
    them (`DataSource.preflight`, the source's own check)."""
    from baldflow.data.registry import data_source
    from baldflow.data.source import SourceNotReadyError
    from baldflow.plugins import PluginError

    try:
        source = data_source(config.data.source)
    except PluginError as error:
        raise PreflightError(str(error)) from None
    options = dict(config.data.options)
    _check_options(config.data.source, source.accepted_options(), options)
    root = config.data.root or None
    if root and not root.startswith("s3://"):  # an object store URL stays as it is
        root = Path(root).expanduser()
    try:
        source.preflight(root, options)
    except SourceNotReadyError as error:
        raise PreflightError(str(error)) from None


def check_pool_unchanged(config: Config, workspace_root: Path) -> None:
    """A pool read in place (data.source disk, a directory or a bucket) must be the pool the
    campaign's rounds were scored on, and its val and test the ones they were evaluated on:
    each round versions their manifests, and content changed since would mix rounds of
    different data under one campaign. Where the parts lie is not held to: a pool moved
    between a disk and a bucket is the same pool (`pool_formats.same_content`)."""
    if config.data.source != "disk" or not config.data.root:
        return
    from baldflow.workspace.repo import DATA_DIR, POOL_MANIFEST_FILE

    recorded_file = workspace_root / DATA_DIR / config.campaign.name / POOL_MANIFEST_FILE
    try:
        recorded = json.loads(recorded_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no round yet: nothing to hold the pool to
    if isinstance(recorded, dict) and "sha256" not in recorded:
        # A frozen backbone's rounds record {"pool": <the raw pool's manifest>, "features"}.
        recorded = recorded.get("pool")
    if not isinstance(recorded, dict) or "sha256" not in recorded:
        return  # no record to compare
    from baldflow.data.disk_source import part_path
    from baldflow.data.object_store import ObjectURL, is_url

    root = config.data.root
    where = ObjectURL.parse(root) if is_url(root) else Path(root).expanduser()
    # Rounds recorded before val and test were versioned hold only the pool to what it was.
    expected = {"pool": recorded, **(recorded.get("held_out") or {})}
    for part, part_recorded in expected.items():
        part_location = part_path(where, part)
        if part_location is None:
            return  # check_data named what is missing
        _check_part_unchanged(
            config, workspace_root, recorded_file, part, part_location, part_recorded
        )


def _check_part_unchanged(
    config: Config,
    workspace_root: Path,
    recorded_file: Path,
    part: str,
    location: Any,
    recorded: dict[str, Any],
) -> None:
    from baldflow.data.pool_formats import cached_manifest, open_pool, same_content

    now = cached_manifest(open_pool(location))
    if not same_content(recorded, now):
        what = "pool" if part == "pool" else f"{part} set"
        raise PreflightError(
            f"the {what} at {location} is not the {what} campaign {config.campaign.name!r} was "
            f"{'scored' if part == 'pool' else 'evaluated'} on: its content hash is "
            f"{now['sha256'][:12]}, the rounds recorded {str(recorded.get('sha256'))[:12]} "
            f"({recorded_file.relative_to(workspace_root)}); fix: put the campaign's data back "
            "at data.root, or start a new campaign on this data (--set campaign.name=NEW)"
        )


def _check_options(source: str, accepted: list[str], options: Mapping[str, Any]) -> None:
    from baldflow.data.source import OPTION_OWNERS

    accepted = [name for name in accepted if name not in OPTION_OWNERS]
    for key, value in options.items():
        if key in OPTION_OWNERS:
            owner = OPTION_OWNERS[key]
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


# ---------------------------------------------------------------------------- tracking
def check_tracking(uri: str | None, workspace_root: Path) -> None:
    """The MLflow store can be written (SQLite, files) or answers (a server, a database)."""
    local = "--set tracking.mlflow_uri=null (the workspace's own store)"
    if not uri:
        store = workspace_root / "mlflow"
        problem = unwritable(store)
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
            problem = unwritable(Path(path).expanduser().parent)
            if problem:
                raise PreflightError(
                    f"tracking.mlflow_uri {uri!r}: the SQLite database cannot be created "
                    f"there, {problem}; fix: --set tracking.mlflow_uri=sqlite:////<writable "
                    f"dir>/mlflow.db, or {local}"
                )
    elif scheme in ("", "file"):
        path = parts.path if scheme == "file" else uri
        problem = unwritable(Path(path).expanduser())
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


def _as_client(url: str) -> urllib.request.Request:
    """A request to `url` with the login MLflow's own client would send: basic auth from
    MLFLOW_TRACKING_USERNAME/PASSWORD, else a bearer MLFLOW_TRACKING_TOKEN, else none."""
    import base64

    request = urllib.request.Request(url)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {pair}")
    elif token:
        request.add_header("Authorization", f"Bearer {token}")
    return request


def _check_credentials(uri: str) -> None:
    """A server with MLflow's basic-auth app answers 401 to a client without a user: say so
    now, in one line, rather than as a traceback from the first run the campaign logs."""
    probe = uri.rstrip("/") + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
    request = _as_client(probe)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
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


# MLflow's permission levels, weakest first (DENY and NO_PERMISSIONS allow nothing).
_PERMISSION_RANK = {"NO_PERMISSIONS": 0, "DENY": 0, "READ": 1, "USE": 2, "EDIT": 3, "MANAGE": 4}
MEMBER_FIX = (
    "the team's admin runs `baldflow stack user add {user} --dir STACK` (the member role: "
    "MANAGE on every experiment and registered model), or grants it in MLflow"
)


def check_tracking_permissions(config: Config) -> None:
    """With a login on a server behind MLflow's basic auth: that login may delete and tag
    runs in the campaign's experiment (MANAGE: a clone that loses a round deletes its run) and
    write its registered model (EDIT), when they exist; whoever creates them owns them. A
    refusal found here is one line before Prefect starts, not an HTTP 403 in round 1."""
    uri = config.tracking.mlflow_uri or ""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    if not uri.startswith(("http://", "https://")) or not (user and password):
        return
    needs = []
    experiment = _mlflow_get(uri, "/api/2.0/mlflow/experiments/get-by-name",
                             {"experiment_name": config.tracking.experiment})  # fmt: skip
    if experiment is not None:
        needs.append(("experiment", experiment["experiment"]["experiment_id"],
                      f"experiment {config.tracking.experiment!r}", "MANAGE",
                      "delete and tag runs in"))  # fmt: skip
    if config.tracking.register_model:
        name = registered_model_name(config.campaign.name)
        if _mlflow_get(uri, "/api/2.0/mlflow/registered-models/get", {"name": name}):
            needs.append(("registered_model", name, f"registered model {name!r}", "EDIT",
                          "register versions of"))  # fmt: skip
    for resource_type, resource_id, what, need, doing in needs:
        answer = _mlflow_get(
            uri, "/api/3.0/mlflow/users/permissions/get",
            {"username": user, "resource_type": resource_type, "resource_id": resource_id},
        )  # fmt: skip
        if answer is None:
            return  # no MLflow basic-auth app behind this server: nothing to ask it
        held = str(answer.get("permission", "NO_PERMISSIONS"))
        if _PERMISSION_RANK.get(held, 0) < _PERMISSION_RANK[need]:
            raise PreflightError(
                f"MLflow user {user!r} may not {doing} {what} on {uri} (it holds {held}, a "
                f"campaign needs {need}); fix: {MEMBER_FIX.format(user=user)}"
            )


def _mlflow_get(uri: str, path: str, query: Mapping[str, str]) -> dict | None:
    """GET an MLflow REST path with the client's login: its JSON, or None on 404 (no such
    object, or no such route). Other failures pass: the run reports them in context."""
    request = _as_client(uri.rstrip("/") + path + "?" + urllib.parse.urlencode(dict(query)))
    try:
        with urllib.request.urlopen(request, timeout=TRACKING_TIMEOUT_S) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        if exc.code == 403:
            return {"permission": "NO_PERMISSIONS"}
        return {}
    except (urllib.error.URLError, OSError, ValueError):
        return {}


def _check_port(uri: str, host: str, port: int, local: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=TRACKING_TIMEOUT_S):
            return
    except OSError as exc:
        raise PreflightError(
            f"tracking.mlflow_uri {uri!r}: the database at {host}:{port} does not answer "
            f"({exc}); fix: start it, or {local}"
        ) from None
