"""Each committed round's model in the MLflow Model Registry, as a pyfunc that predicts exactly
what the round's scoring pass computed (same weights, same K consistent dropout masks).

One registered model per campaign (`baldflow-<campaign>`), one version per round, found again by
the round's run id so that a retried task, a resumed campaign or a repair never adds a second.
This module stores and registers; the pyfunc itself (baldflow.serving.RoundModel) predicts, and
is named here only in the code file MLflow runs to load it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from baldflow.config import registered_model_name
from baldflow.models.weights import SPEC_FILE, WEIGHTS_FILE, save_model_files
from baldflow.workspace.tracking import (
    TAG_CAMPAIGN,
    TAG_OPERATOR,
    TAG_PARENT,
    TAG_ROUND,
    TAG_WORKSPACE,
    Tracker,
)

# MLflow reserves the alias "latest" (`models:/name/latest` is the highest version number,
# which a repaired older round could be): the newest round gets an alias of its own.
ALIAS_LATEST = "latest-round"
MODEL_FILES = (WEIGHTS_FILE, SPEC_FILE)
# Where Tracker.log_round puts a round's weights and spec among its run's artifacts.
RUN_MODEL_DIR = "model"
# What the pyfunc needs of the round's parameters, by their names among the run's params.
PARAM_SEED = "seed"
PARAM_MC_SAMPLES = "acquisition.mc_samples"
# The version tags that link a model to git, DVC and the workspace (also read by tests).
VERSION_TAGS = ("git.tag", "git.commit", "dvc.labeled_set_md5", "baldflow.strategy")
# On the campaign's parent run: tracking.register_model as of the campaign's latest start. The
# round tasks read it there, so it reaches them whichever process or worker runs them.
TAG_REGISTER = "baldflow.register_model"
INPUT_EXAMPLE_ROWS = 2
# What the model needs to be loaded anywhere; versions are those it was saved with.
REQUIREMENTS = ("baldflow", "torch", "mlflow", "numpy", "pandas")

# The pyfunc's code, loaded by MLflow's models-from-code: the class is imported, never unpickled.
# Each registered version keeps its own copy (round_model.py), so the address written here is
# the one that version is loaded by from then on (see __getattr__ for the older address).
_MODEL_CODE = """\
from mlflow.models import set_model

from baldflow.serving import RoundModel

set_model(RoundModel())
"""


def __getattr__(name: str) -> Any:
    """`RoundModel`, for versions registered before the pyfunc moved to baldflow.serving: their
    round_model.py imports it from this module. Imported on that first use only, so storing and
    registering rounds never imports the model's prediction (baldflow.inference)."""
    if name == "RoundModel":
        from baldflow.serving import RoundModel

        return RoundModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class RegistryError(RuntimeError):
    """A round's model cannot be registered (its run lacks what rebuilding it needs)."""


# ---------------------------------------------------------------------------- names and params
def round_alias(round_index: int) -> str:
    return f"round-{round_index:04d}"


@dataclasses.dataclass(frozen=True)
class RoundScoring:
    """The round's scoring pass: its seed (the round seed) and K, the MC dropout samples.

    Written as the pyfunc's `scoring` artifact (scoring.json), from which baldflow.serving
    redraws the masks as baldflow.compute.scoring.score_pool draws them, so the pyfunc sees the
    same K posterior samples the round acquired with.
    """

    seed: int
    mc_samples: int

    @classmethod
    def from_run_params(cls, params: Mapping[str, str], run_id: str) -> RoundScoring:
        missing = [name for name in (PARAM_SEED, PARAM_MC_SAMPLES) if name not in params]
        if missing:
            raise RegistryError(
                f"MLflow run {run_id} lacks param(s) {', '.join(missing)}: cannot rebuild the "
                "round's scoring pass for its registered model"
            )
        return cls(seed=int(params[PARAM_SEED]), mc_samples=int(params[PARAM_MC_SAMPLES]))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


# ---------------------------------------------------------------------------- the network
def load_round_network(spec_path: str | Path, weights_path: str | Path) -> Any:
    """The round's network, rebuilt from its spec and weights, in eval mode on the CPU."""
    from baldflow.models.building import ModelRebuildError, rebuild_model

    try:
        return rebuild_model(spec_path, weights_path)
    except ModelRebuildError as error:
        raise RegistryError(
            f"cannot rebuild the round's network from {Path(spec_path).name} and "
            f"{Path(weights_path).name}: {error}"
        ) from error


# ---------------------------------------------------------------------------- saving
@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """MLflow draws a progress bar for every artifact it copies, even a local file: three
    bars per round in the campaign's log. Off for the block unless the user chose otherwise."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)


class _DropValidationNote(logging.Filter):
    """MLflow says at INFO, once per saved model, that it validates the input example against
    the signature: a line in every round's output with nothing in it for the user (both are
    ours, an all-zero example; a mismatch still raises)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Validating input example against model")


@contextlib.contextmanager
def _no_validation_note() -> Iterator[None]:
    logger = logging.getLogger("mlflow.pyfunc")
    note = _DropValidationNote()
    logger.addFilter(note)
    try:
        yield
    finally:
        logger.removeFilter(note)


@functools.cache
def pip_requirements() -> tuple[str, ...]:
    """Pinned to what is installed: no requirement inference (that runs a subprocess), and
    read once a process (reading package metadata costs milliseconds a package)."""
    return tuple(f"{name}=={metadata.version(name)}" for name in REQUIREMENTS)


def round_signature(spec: Mapping[str, Any]) -> Any:
    """The pyfunc's signature, from the network's spec alone: [N, F] float32 features in, the
    columns baldflow.serving.prediction_frame gives (prob_0..prob_{C-1} and bald, float64)
    out. Written directly rather than inferred from a prediction: inferring meant running the
    network's K dropout passes on an example at every registration, for a signature that is the
    same for every round of a campaign."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    features = int(np.prod(spec["input_shape"]))
    columns = [f"prob_{c}" for c in range(int(spec["num_classes"]))] + ["bald"]
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, features))]),
        outputs=Schema([ColSpec("double", name) for name in columns]),
    )


def _signature_and_example(model_dir: Path) -> tuple[Any, Any]:
    """An all-zero example (shape and dtype only: the pool's samples stay out of the registry,
    and the tracking task never sees them) and the signature. The network is rebuilt from the
    files (a round whose files give no network is refused here, not by whoever loads it
    later) but not run: MLflow checks the example against the signature, not a prediction."""
    import numpy as np

    network = load_round_network(model_dir / SPEC_FILE, model_dir / WEIGHTS_FILE)
    signature = round_signature(network.spec)
    features = signature.inputs.inputs[0].shape[1]
    return signature, np.zeros((INPUT_EXAMPLE_ROWS, features), dtype=np.float32)


# The files of a round's pyfunc that MLflow writes from the model's artifacts, and the MLmodel
# fields that name them or the round: all else is the same for every round of a signature.
ARTIFACT_FILES = {"spec": SPEC_FILE, "state_dict": WEIGHTS_FILE, "scoring": "scoring.json"}
CODE_FILE = "round_model.py"
MLMODEL_FILE = "MLmodel"
# Written by MLflow after it measures the model's size (model_size_bytes leaves them out).
ENV_FILES = ("conda.yaml", "python_env.yaml", "requirements.txt")


@dataclasses.dataclass(frozen=True)
class PyfuncLayout:
    """What MLflow wrote for a round's pyfunc that does not change between rounds: the
    environment files, the input example, the flavor's configuration and the signature.

    Made once a process (per signature and requirements) by mlflow.pyfunc.save_model itself,
    so each file stays as the installed MLflow writes it; later rounds write these bytes again
    with their own artifacts and ids, instead of MLflow processing the requirements, checking
    them against the environment and copying the artifacts by URI every round.
    """

    files: Mapping[str, bytes]
    mlmodel: Mapping[str, Any]


_LAYOUTS: dict[tuple[str, tuple[str, ...]], PyfuncLayout] = {}
_LAYOUTS_LOCK = threading.Lock()


def _layout_of(path: Path) -> PyfuncLayout:
    from mlflow.models import Model

    files = {
        str(f.relative_to(path)): f.read_bytes()
        for f in sorted(path.rglob("*"))
        if f.is_file()
        and f.name != MLMODEL_FILE
        and f.name != CODE_FILE
        and f.parent.name != "artifacts"
    }
    return PyfuncLayout(files=files, mlmodel=Model.load(path / MLMODEL_FILE).to_dict())


def _write_from_layout(
    layout: PyfuncLayout, path: Path, sources: Mapping[str, Path], code: Path, mlflow_model: Any
) -> None:
    """The round's pyfunc as MLflow would write it: the layout's files, the round's artifacts
    and code, and an MLmodel with the round's ids, sources, time and size."""
    import shutil
    from datetime import datetime, timezone

    from mlflow.models import Model

    (path / "artifacts").mkdir(parents=True)
    flavor = json.loads(json.dumps(layout.mlmodel["flavors"]))
    pyfunc = flavor[mlflow.pyfunc.FLAVOR_NAME]
    for key, entry in pyfunc["artifacts"].items():
        shutil.copyfile(sources[key], path / entry["path"])
        entry["uri"] = str(sources[key])
    shutil.copyfile(code, path / CODE_FILE)
    pyfunc["model_code_path"] = str(code)
    for name, data in layout.files.items():
        if name not in ENV_FILES:
            (path / name).write_bytes(data)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    for name in ENV_FILES:
        (path / name).write_bytes(layout.files[name])
    model = Model.from_dict(
        {
            **layout.mlmodel,
            "flavors": flavor,
            "artifact_path": mlflow_model.artifact_path,
            "run_id": mlflow_model.run_id,
            "model_uuid": mlflow_model.model_uuid,
            "model_id": mlflow_model.model_id,
            "utc_time_created": str(datetime.now(timezone.utc).replace(tzinfo=None)),
            "model_size_bytes": size,
        }
    )
    model.save(str(path / MLMODEL_FILE))


def save_round_model(path: Path, model_dir: Path, scoring: RoundScoring, mlflow_model: Any) -> None:
    """Write the pyfunc of the round whose spec.json and state_dict.pt are in `model_dir`.

    The first round of a process (of each signature) is saved by mlflow.pyfunc.save_model;
    the rounds after it are written from what that save wrote (PyfuncLayout), which is what
    MLflow would write again for them but for the artifacts, ids, time and size.
    """
    (model_dir / "scoring.json").write_text(scoring.to_json())
    code = model_dir / CODE_FILE
    code.write_text(_MODEL_CODE)
    signature, example = _signature_and_example(model_dir)
    sources = {key: model_dir / name for key, name in ARTIFACT_FILES.items()}
    key = (json.dumps(signature.to_dict(), sort_keys=True), pip_requirements())
    with _LAYOUTS_LOCK:
        layout = _LAYOUTS.get(key)
    if layout is not None:
        _write_from_layout(layout, path, sources, code, mlflow_model)
        return
    with _no_progress_bars(), _no_validation_note():
        mlflow.pyfunc.save_model(
            str(path),
            python_model=str(code),
            artifacts={key: str(source) for key, source in sources.items()},
            signature=signature,
            input_example=example,
            pip_requirements=list(pip_requirements()),
            mlflow_model=mlflow_model,
        )
    layout = _layout_of(path)
    if set(ENV_FILES) <= set(layout.files):
        with _LAYOUTS_LOCK:
            _LAYOUTS[key] = layout


# ---------------------------------------------------------------------------- registering
def registry_client(tracker: Tracker) -> Any:
    """A client whose Model Registry is the tracker's store.

    A plain MlflowClient(tracking_uri=...) sends registry calls to the process-wide registry
    URI whenever one is set (mlflow.set_registry_uri, MLFLOW_REGISTRY_URI): a round's version
    would land in another store than its run.
    """
    tracker.client  # noqa: B018 (creates the SQLite store, all or nothing, on first use)
    return _client_for(tracker.tracking_uri)


@functools.lru_cache(maxsize=16)
def _client_for(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def record_switch(tracker: Tracker, parent_run_id: str, enabled: bool) -> None:
    """Note on the campaign's run whether its rounds are registered (see TAG_REGISTER)."""
    registry_client(tracker).set_tag(parent_run_id, TAG_REGISTER, "true" if enabled else "false")


def switched_on(tracker: Tracker, run_id: str) -> bool:
    """Whether the campaign of round run `run_id` registers its models (default: yes)."""
    client = registry_client(tracker)
    parent = client.get_run(run_id).data.tags.get(TAG_PARENT)
    if not parent:
        return True
    return client.get_run(parent).data.tags.get(TAG_REGISTER, "true") == "true"


@dataclasses.dataclass(frozen=True)
class RoundVersion:
    """A round's registered version, and whether this call created it (False: found)."""

    name: str
    version: str
    round_index: int
    run_id: str
    created: bool


def find_version(client: Any, name: str, run_id: str) -> Any | None:
    """The version of `name` registered from run `run_id`, if any: what makes registering
    idempotent (a round has one run, so one version)."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def ensure_registered_model(client: Any, name: str, campaign: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name,
            tags={TAG_CAMPAIGN: campaign},
            description=f"The model of each round of active-learning campaign {campaign}.",
        )
    except MlflowException as error:
        # Created by an earlier round, or by another workspace on a shared server.
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def create_version(client: Any, name: str, campaign: str, **fields: Any) -> Any:
    """A new version of `name`, the registered model created first if there is none yet.

    Tried on the registered model first: it exists from the campaign's first round on, and
    creating it every round was a refused write to the store each time."""
    from mlflow.exceptions import MlflowException

    try:
        return client.create_model_version(name, **fields)
    except MlflowException as error:
        # A server behind MLflow's basic auth answers 403, not 404, for a registered model
        # that does not exist yet (it cannot tell whether the caller may write it). A 403 for
        # one that exists comes back from the second try.
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "PERMISSION_DENIED"):
            raise
    ensure_registered_model(client, name, campaign)
    return client.create_model_version(name, **fields)


def _logged_model_name(campaign: str, round_index: int) -> str:
    return f"{campaign}-{round_alias(round_index)}"


def _ready_logged_model(tracker: Tracker, run_id: str, name: str) -> Any | None:
    """A complete pyfunc an earlier, interrupted attempt logged for this run (reused so a retry
    leaves no second copy)."""
    from mlflow.entities import LoggedModelStatus

    found = registry_client(tracker).search_logged_models(
        [tracker.experiment_id],
        # Not filtered on status in the query: the store keeps it as a number, and PostgreSQL
        # refuses the comparison with 'READY' that SQLite lets through.
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
    )
    return next((m for m in found if m.status == LoggedModelStatus.READY), None)


def log_round_model(
    tracker: Tracker, run_id: str, campaign: str, round_index: int, model_dir: Path
) -> Any:
    """The round's pyfunc as an MLflow LoggedModel linked to the round's run (through the client
    with explicit ids: the fluent log_model would use a thread-local active run and the global
    tracking URI)."""
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    client = registry_client(tracker)
    name = _logged_model_name(campaign, round_index)
    logged = _ready_logged_model(tracker, run_id, name)
    if logged is not None:
        return logged
    scoring = RoundScoring.from_run_params(client.get_run(run_id).data.params, run_id)
    logged = client.create_logged_model(
        tracker.experiment_id,
        name=name,
        source_run_id=run_id,
        tags={
            TAG_WORKSPACE: tracker.workspace_id,
            TAG_CAMPAIGN: campaign,
            TAG_ROUND: str(round_index),
        },
    )
    mlflow_model = Model(
        artifact_path=logged.artifact_location,
        run_id=run_id,
        model_uuid=logged.model_id,
        model_id=logged.model_id,
    )
    with tempfile.TemporaryDirectory() as tmp:
        save_round_model(Path(tmp) / "pyfunc", model_dir, scoring, mlflow_model)
        client.log_model_artifacts(logged.model_id, str(Path(tmp) / "pyfunc"))
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=round_index)])
    return client.finalize_logged_model(logged.model_id, "READY")


def _round_of(client: Any, name: str, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        # No such alias yet; stores differ in the error code they give for it.
        return None
    return int(version.tags.get(TAG_ROUND, -1))


def set_aliases(client: Any, name: str, version: str, round_index: int) -> None:
    """`round-NNNN` on the round's version; `latest-round` too unless a later round has it
    (a repair may register an older round after a newer one)."""
    client.set_registered_model_alias(name, round_alias(round_index), version)
    latest = _round_of(client, name, ALIAS_LATEST)
    if latest is None or latest <= round_index:
        client.set_registered_model_alias(name, ALIAS_LATEST, version)


def version_description(
    campaign: str, round_index: int, tags: Mapping[str, str], operator: str
) -> str:
    """What the registry's list of versions says of one: version numbers follow the order of
    registration (a round registered late by a repair gets a later number), so the round is
    named in words. MLflow records no user for a version: the operator is named here too."""
    text = f"Round {round_index} of campaign {campaign}"
    if tags.get("git.tag"):
        text += f" (git tag {tags['git.tag']})"
    return text + (f", registered by {operator}." if operator else ".")


def register_round(
    tracker: Tracker,
    *,
    campaign: str,
    round_index: int,
    run_id: str,
    tags: Mapping[str, str],
    model_dir: Path,
) -> RoundVersion:
    """Register the round whose spec.json and state_dict.pt are in `model_dir`, once.

    A version already registered from the run is kept (its aliases set again, in case the
    attempt that created it stopped before them); otherwise the pyfunc is logged and a version
    tagged with the round's git tag, labeled-set md5, round and workspace is created.
    """
    client = registry_client(tracker)
    name = registered_model_name(campaign)
    version = find_version(client, name, run_id)
    created = version is None
    if created:
        logged = log_round_model(tracker, run_id, campaign, round_index, model_dir)
        version = create_version(
            client,
            name,
            campaign,
            # Where the files are, not `models:/<id>`: MLflow's SQL registry resolves that
            # through the process-wide tracking URI, which is not this tracker's.
            source=logged.artifact_location,
            run_id=run_id,
            tags={
                **{key: str(tags[key]) for key in VERSION_TAGS if tags.get(key)},
                TAG_CAMPAIGN: campaign,
                TAG_ROUND: str(round_index),
                TAG_WORKSPACE: tracker.workspace_id,
                **({TAG_OPERATOR: tracker.operator} if tracker.operator else {}),
            },
            description=version_description(campaign, round_index, tags, tracker.operator),
            model_id=logged.model_id,
        )
    set_aliases(client, name, version.version, round_index)
    return RoundVersion(name, str(version.version), round_index, run_id, created)


def register_round_state(
    tracker: Tracker,
    *,
    campaign: str,
    round_index: int,
    run_id: str,
    tags: Mapping[str, str],
    model_state: Mapping[str, Any],
    model_spec: Mapping[str, Any],
) -> RoundVersion:
    """register_round from the weights in memory (the round that just ran)."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_model_files(tmp, model_state, model_spec)
        return register_round(
            tracker,
            campaign=campaign,
            round_index=round_index,
            run_id=run_id,
            tags=tags,
            model_dir=model_dir,
        )


# ---------------------------------------------------------------------------- repair
@dataclasses.dataclass
class RegistryRepair:
    """What registering the committed rounds found missing and did about it."""

    registered: list[int] = dataclasses.field(default_factory=list)
    # Rounds whose run has no model files: the process stopped before uploading them.
    without_model: list[int] = dataclasses.field(default_factory=list)
    # Rounds whose files or params cannot give a model, with why (RegistryError).
    failed: dict[int, str] = dataclasses.field(default_factory=dict)


def _run_here(tracker: Tracker, run_id: str) -> bool:
    """Whether the run is in this store and belongs to this workspace."""
    from mlflow.exceptions import MlflowException

    try:
        run = registry_client(tracker).get_run(run_id)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return run.data.tags.get(TAG_WORKSPACE) == tracker.workspace_id


def _has_model_files(client: Any, run_id: str) -> bool:
    listed = {Path(f.path).name for f in client.list_artifacts(run_id, RUN_MODEL_DIR)}
    return set(MODEL_FILES) <= listed


def _download_model_files(client: Any, run_id: str, into: Path) -> Path:
    with _no_progress_bars():
        return Path(client.download_artifacts(run_id, RUN_MODEL_DIR, str(into)))


def repair_registrations(
    tracker: Tracker, campaign: str, committed: Mapping[int, Mapping[str, Any]]
) -> RegistryRepair:
    """Register every committed round of this workspace whose version is missing.

    A process that died after a round's commit but before its registration (or a campaign run
    with registration switched off) leaves such rounds; their weights come from their runs.
    Only runs in this store are considered: a campaign moved to another tracking server keeps
    its older rounds where they were. A round that cannot give a model is reported, not
    raised: the registry is bookkeeping, and must not keep the campaign from starting.
    """
    client = registry_client(tracker)
    done = RegistryRepair()
    name = registered_model_name(campaign)
    registered = {v.run_id for v in client.search_model_versions(f"name = '{name}'")}
    for round_index, record in sorted(committed.items()):
        run_id = str(record.get("run_id") or "")
        if not run_id or run_id in registered or not _run_here(tracker, run_id):
            continue
        if not _has_model_files(client, run_id):
            done.without_model.append(round_index)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                register_round(
                    tracker,
                    campaign=campaign,
                    round_index=round_index,
                    run_id=run_id,
                    tags=record.get("tags", {}),
                    model_dir=_download_model_files(client, run_id, Path(tmp)),
                )
            except RegistryError as error:
                done.failed[round_index] = str(error)
                continue
        done.registered.append(round_index)
    return done
