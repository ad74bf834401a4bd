"""The validated parameter schema of a campaign (params.yaml) and its loading and overrides.

Validation happens before any work, so a wrong value fails with a message naming field and value.
"""

from __future__ import annotations

import copy
import difflib
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

SECTIONS = ("campaign", "data", "model", "training", "acquisition", "oracle")
# Sections of params.yaml that other readers of the file own, such as the `benchmark` section
# of the strategy comparison (dvc.yaml). A campaign neither reads nor checks them: their owners
# validate them, and this schema stays independent of theirs.
# `plugins` is what a campaign recorded of its plug-ins beside its parameters (campaign.yaml,
# plugin_record): read back with the record, never a parameter.
FOREIGN_SECTIONS = frozenset({"benchmark", "plugins"})

# Campaign names become git tags (<name>/round-NNNN), directory names and Prefect artifact keys,
# which accept only lowercase letters, digits and dashes; one rule that suits all three.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_DASK_ADDRESS_RE = re.compile(r"^(tcp|tls)://[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")


class ConfigError(ValueError):
    """A parameter is missing, unknown or out of range; the message names the field and value.

    `fields` holds the dotted names at fault when known, so a caller that merged several
    origins (a file, --set overrides) can say which one the bad value came from.
    """

    def __init__(self, message: str, *, fields: tuple[str, ...] = ()):
        super().__init__(message)
        self.fields = fields


class _Section(BaseModel):
    # Unknown keys are typos more often than not: refuse them instead of ignoring them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CampaignConfig(_Section):
    name: str = "digits-power-bald"
    seed: int = Field(0, ge=0)
    rounds: int = Field(25, ge=0)
    initial_per_class: int = Field(2, ge=1)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                "must be lowercase letters, digits and dashes, starting with a letter or digit"
            )
        return value


class DataConfig(_Section):
    source: str = "digits"
    root: str | None = None
    repeat: int = Field(1, ge=1)
    noise_std: float = Field(0.0, ge=0.0)
    # Extra keyword arguments of the data source (e.g. validation size, npz path).
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_root(self) -> DataConfig:
        # An object store URL: only the disk source reads its pool by byte ranges; the others
        # would hand "s3://..." to a loader that opens local files.
        if self.root is not None and self.root.startswith("s3://"):
            bucket, _, key = self.root[len("s3://") :].partition("/")
            if not bucket or "//" in key or any(c.isspace() for c in self.root):
                raise ValueError(f"root {self.root!r} is not an s3://bucket/prefix URL")
            if self.source != "disk":
                raise ValueError(
                    f"root {self.root!r} is in object storage, which only data.source 'disk' "
                    f"reads (got {self.source!r}); download the files, or write them as a disk "
                    f"source (baldflow pool convert)"
                )
        return self


class ModelConfig(_Section):
    # A built-in network (mlp, cnn, batchbald-cnn, resnet18), an installed package's entry
    # point (baldflow.models), `torchvision:ARCH`, or an import string package.module:callable.
    name: str = "mlp"
    # The built-in networks' dropout rate; a plug-in model keeps the dropout layers it has.
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    # Keyword options of the model plug-in (the built-ins: hidden, stochastic_convs).
    options: dict[str, Any] = Field(default_factory=dict)
    # Pretrained weights: a state_dict in a .pt/.pth or .safetensors file, loaded without
    # running code. The path is this machine's; the file's sha256 is the campaign's identity.
    weights: str | None = None
    # The submodule applied last (e.g. fc, classifier), used to split the network into the
    # part run once and the part run K times when torch.fx cannot trace it.
    head: str | None = None
    # Insert a dropout layer of this rate before the network's last linear layer (a network
    # without dropout has nothing for MC dropout to sample).
    head_dropout: float | None = Field(None, gt=0.0, lt=1.0)
    # backbone: the part before the first dropout is frozen; its outputs for every sample are
    # computed once and cached, and rounds train and score only the head on them.
    freeze: Literal["none", "backbone"] = "none"


class TrainingConfig(_Section):
    learning_rate: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(64, ge=1)
    epoch_samples: int = Field(1024, ge=1)
    max_epochs: int = Field(40, ge=1)
    patience: int = Field(3, ge=1)
    eval_mc_samples: int = Field(10, ge=1)
    weight_decay: float = Field(0.0, ge=0.0)
    device: str = "cpu"
    # bfloat16 autocast for forward passes (training, scoring) on CUDA; log-probabilities stay
    # float32. Does nothing on the CPU. Strict: a YAML `yes`/`no` is a bool, but 1 or "true"
    # here is a typo more likely than a wish.
    mixed_precision: bool = Field(False, strict=True)
    # CPU threads for torch during a campaign (0: torch's default). Small models on a busy
    # machine run several times faster on one thread than fighting for two.
    num_threads: int = Field(1, ge=0)
    # Who trains the round's model: baldflow's loop (`baldflow`, the fields above), an installed
    # package's entry point (baldflow.trainers) or an import string package.module:callable.
    trainer: str = "baldflow"
    # Keyword options of the trainer (a plug-in trainer's own; baldflow's loop takes none).
    options: dict[str, Any] = Field(default_factory=dict)


class AcquisitionSettings(_Section):
    """How a batch is acquired, whichever strategy acquires it.

    A campaign's `acquisition` section is these plus its strategy (AcquisitionConfig); the
    strategy comparison runs several strategies with one setting and takes these fields as they
    are, so both read the same keys with the same bounds and defaults.
    """

    batch_size: int = Field(10, ge=1)
    coldness: float = Field(1.0, ge=0.0)
    mc_samples: int = Field(20, ge=1)
    # BatchBALD only: BALD preselects this many candidates before the joint scoring.
    batchbald_candidates: int = Field(1000, ge=1)
    batchbald_num_samples: int = Field(10000, ge=1)
    chunk_size: int = Field(1024, ge=1)
    # EPIG strategies: target inputs drawn from the pool (by a keyed hash of their ids).
    epig_targets: int = Field(100, ge=1)
    # Annealed strategies: the coldness of the last pick; the first pick uses `coldness`.
    coldness_end: float = Field(0.25, ge=0.0)
    # Evidence only, never the batch: also run BatchBALD on the round's top candidates and log
    # how its batch compares (overlap, joint mutual information).
    shadow_batchbald: bool = False


REGISTERED_MODEL_PREFIX = "baldflow-"


def registered_model_name(campaign: str) -> str:
    """`baldflow-<campaign>`: the campaign's registered model in MLflow's registry, with
    anything the registry or a URI would choke on made a dash.

    Campaign names are already lowercase-dash; this keeps the name valid if that ever loosens
    (MLflow refuses '/' and ':', and `models:/<name>@alias` URIs need no escaping this way).
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", campaign).strip("-.")
    if not safe:
        raise ConfigError(f"campaign name {campaign!r} leaves no usable registered model name")
    return REGISTERED_MODEL_PREFIX + safe


def strategy_spelling(name: Any) -> Any:
    """A strategy name as spelled today: hyphens only (`power-least-confidence`).

    Campaigns started before the names settled on one separator recorded
    `power-least_confidence` (campaign.yaml, hand-off state, ledger rows): they are read with
    today's spelling, so they keep resuming and their record compares equal. No strategy name
    has an underscore any more, so the mapping cannot turn one valid name into another.
    """
    if not isinstance(name, str) or ":" in name:  # an import string is spelled as written
        return name
    return name.replace("_", "-")


class _StrategyChoice(_Section):
    strategy: str = "power-bald"

    @field_validator("strategy", mode="before")
    @classmethod
    def _today_spelling(cls, value: Any) -> Any:
        return strategy_spelling(value)


# pydantic lists the fields of the last base first: the strategy leads the section, as in
# params.yaml and every params.yaml that dump_yaml writes.
class AcquisitionConfig(AcquisitionSettings, _StrategyChoice):
    """The `acquisition` section: the strategy and how it acquires."""


class LabelStudioSettings(_Section):
    """Where the `label-studio` oracle's server is and how it settles disagreements."""

    # None: the workspace's own server (`baldflow label-studio up`, in <workspace>/label-studio).
    # A URL: a server the team runs; its API token goes in BALDFLOW_LABEL_STUDIO_TOKEN.
    url: str | None = None
    # With url: the folder the server serves local files from (its
    # LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT) as this machine sees it; None: pictures travel
    # inside the tasks as data URIs.
    document_root: str | None = None
    # Two annotators disagree on a sample: refuse (the pull names it) or take the majority
    # (a tie is still refused); the decision is recorded in the ledger's labeled_by.
    conflicts: Literal["refuse", "majority"] = "refuse"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value


class OracleConfig(_Section):
    # "simulated" reads the held-back labels; "file" hands each batch to people as a CSV under
    # data/<campaign>/to-label/ and waits for `baldflow label import`; "label-studio" makes it
    # tasks of the campaign's Label Studio project and waits for `baldflow label pull`.
    kind: Literal["simulated", "file", "label-studio"] = "simulated"
    label_studio: LabelStudioSettings = LabelStudioSettings()


class TrackingConfig(_Section):
    """Where bookkeeping goes; the defaults keep everything inside the workspace."""

    mlflow_uri: str | None = None
    experiment: str = "baldflow"
    # Each round's model as a version of `baldflow-<campaign>` in the MLflow Model Registry.
    register_model: bool = True

    @field_validator("mlflow_uri")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        # The URI is recorded in the campaign's campaign.yaml, which git keeps and every clone
        # shares: a password in it would be committed. MLflow reads one from the environment.
        if value is not None and urllib.parse.urlsplit(value).password is not None:
            raise ValueError(
                "must not carry a password (it would be committed with the campaign's record); "
                "give the URI without it and the password in $MLFLOW_TRACKING_PASSWORD"
            )
        return value


class ScaleConfig(_Section):
    """Where the pool is scored: in this process, or in shards on Dask workers.

    Never part of a campaign's identity: the batch is the same whichever runner and however
    many shards scored the pool (the selection noise is keyed by sample id, not position).
    """

    # local: this process (a pool on disk is still read shard by shard, never loaded whole);
    # dask: shards as Prefect tasks on Dask workers through prefect-dask's DaskTaskRunner.
    runner: Literal["local", "dask"] = "local"
    # Shards per scoring pass; None: 4 per Dask worker (dask), or one per 262,144 samples.
    shards: int | None = Field(None, ge=1)
    # A standing cluster (`dask scheduler` + `dask worker`); None: a temporary local cluster.
    dask_address: str | None = None
    # Worker processes of the temporary local cluster (each uses one torch thread).
    workers: int = Field(2, ge=1)
    # An s3://bucket/prefix through which the round's model, labeled ids and score files
    # travel to shard workers that share no filesystem with the flow (credentials from the
    # environment, as for a pool in a bucket); None: the workspace's scratch directory, which
    # workers must reach at the same path.
    staging: str | None = None

    @field_validator("dask_address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is not None and not _DASK_ADDRESS_RE.match(value):
            raise ValueError(
                "must be a Dask scheduler address such as tcp://127.0.0.1:8786 (host:port "
                "after tcp:// or tls://)"
            )
        return value

    @field_validator("staging")
    @classmethod
    def _check_staging(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from baldflow.data.object_store import ObjectStoreError, ObjectURL

        try:
            return str(ObjectURL.parse(value))
        except ObjectStoreError as error:
            raise ValueError(
                f"must be an s3://bucket/prefix URL where shard workers read and write the "
                f"round's staged files ({error})"
            ) from None

    @model_validator(mode="after")
    def _check_runner(self) -> ScaleConfig:
        if self.dask_address is not None and self.runner != "dask":
            raise ValueError(
                "dask_address is set but runner is 'local': set scale.runner: dask to score "
                "on that cluster, or remove the address"
            )
        return self


class Config(_Section):
    campaign: CampaignConfig = Field(default_factory=CampaignConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    acquisition: AcquisitionConfig = Field(default_factory=AcquisitionConfig)
    oracle: OracleConfig = Field(default_factory=OracleConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    scale: ScaleConfig = Field(default_factory=ScaleConfig)

    @model_validator(mode="after")
    def _check_staging(self) -> Config:
        if self.scale.staging is not None and self.model.freeze == "backbone":
            raise ValueError(
                "scale.staging with model.freeze backbone: a frozen backbone's feature cache "
                "is written where the workers run and is not staged through the store yet; "
                "remove scale.staging (workers on a shared filesystem) or model.freeze"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def identity(self) -> dict[str, Any]:
        """The parameters that must not change while a campaign is resumed.

        Everything that decides which samples get acquired; the number of rounds, the device,
        mixed precision (like the device, how the arithmetic runs, not what is computed), the
        thread count and the tracking destination may change between runs of a campaign.
        """
        data = self.to_dict()
        data["campaign"].pop("rounds")
        data["training"].pop("device")
        data["training"].pop("mixed_precision")
        data["training"].pop("num_threads")
        data.pop("tracking")
        data.pop("scale")
        # Where the labeling server is, and how people's disagreements are settled (recorded
        # per sample), do not change which samples get acquired.
        data["oracle"].pop("label_studio")
        data["acquisition"].pop("shadow_batchbald")
        # Where the weights file lies is this machine's; its sha256 is the identity (recorded
        # with the plug-ins, plugin_record).
        data["model"].pop("weights")
        # Likewise where a pool read in place lies (a directory, a bucket): every round records
        # the manifests of its pool, val and test, and preflight.check_pool_unchanged holds a
        # resumed campaign to them, so a pool moved (into a bucket, say) is still the campaign's.
        if self.data.source == "disk":
            data["data"].pop("root")
        return data

    def record(self) -> dict[str, Any]:
        """What a campaign records of itself (data/<campaign>/campaign.yaml): its identity, its
        length and where it is tracked.

        The length and the tracking are not identity (they may change between runs) but they
        are the campaign's, not the machine's: `run --campaign NAME` resumes with them rather
        than with whatever params.yaml says, and a run that changes them (`--set
        campaign.rounds=N`) records the change with the next round it commits. The device,
        threads, mixed precision, scale, the Label Studio server and the shadow BatchBALD
        evidence stay this run's choice (docs/pipeline.md, "What a resume takes from where").
        """
        data = self.identity()
        data["campaign"]["rounds"] = self.campaign.rounds
        # Kept so that `run --campaign NAME` finds the weights again; a moved file is fine
        # as long as its sha256 is the recorded one. The same for a pool read in place.
        data["model"]["weights"] = self.model.weights
        data["data"]["root"] = self.data.root
        data["tracking"] = self.to_dict()["tracking"]
        return data


# pydantic's error types for a value of the wrong type, as what the field accepts.
_TYPE_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "text",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}


def _fields_at(loc: Iterable[Any], model: type[BaseModel] = Config) -> list[str] | None:
    """The field names of the section that `loc` (a path of names) leads to, or None."""
    current: type[BaseModel] = model
    for part in loc:
        info = current.model_fields.get(str(part))
        annotation = info.annotation if info is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        current = annotation
    return list(current.model_fields)


def nearest(name: str, valid: Iterable[str]) -> str | None:
    """The valid name closest to a mistyped one (difflib ratio >= 0.65), or None."""
    found = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.65)
    return found[0] if found else None


def _unknown_key(loc: tuple[Any, ...], value: Any, model: type[BaseModel]) -> str:
    """An unknown key: what it is, the valid keys of its section and the nearest of them."""
    field = ".".join(str(part) for part in loc)
    valid = _fields_at(loc[:-1], model)
    if valid is None:
        return f"{field} is not a known parameter (got {value!r})"
    if len(loc) == 1:
        guess = nearest(loc[0], valid)
        hint = f"; did you mean {guess}?" if guess else ""
        return f"{field} is not a known section{hint} (sections: {', '.join(valid)})"
    parent = ".".join(str(part) for part in loc[:-1])
    guess = nearest(loc[-1], valid)
    if guess is not None:
        suggestion = f"{parent}.{guess}"
    else:
        # The right name in the wrong section (training.strategy for acquisition.strategy).
        homes = _sections_with(str(loc[-1]), model) if len(loc) == 2 else []
        suggestion = homes[0] if len(homes) == 1 else None
    hint = f"; did you mean {suggestion}?" if suggestion else ""
    return (
        f"{field} is not a known parameter (got {value!r}){hint} "
        f"({parent} parameters: {', '.join(valid)})"
    )


def _sections_with(key: str, model: type[BaseModel] = Config) -> list[str]:
    """Every `section.key` of the schema whose key is `key` (batch_size: two of them)."""
    found = []
    for section in model.model_fields:
        fields = _fields_at((section,), model)
        if fields is not None and key in fields:
            found.append(f"{section}.{key}")
    return found


def _without_password(value: Any) -> Any:
    """`value` as an error message may show it: a URL's password replaced by ***."""
    if not isinstance(value, str):
        return value
    try:
        password = urllib.parse.urlsplit(value).password
    except ValueError:  # not a URL at all
        return value
    return value if password is None else value.replace(f":{password}@", ":***@", 1)


def _describe(error: Mapping[str, Any], model: type[BaseModel] = Config) -> str:
    """One pydantic error as `<field> must be <what is allowed>, got <value>` (and a guess).

    `model` is the schema the error's location starts from; where the location does not
    resolve in it (another schema's errors), the message only lacks the list of valid keys.
    """
    loc = tuple(error["loc"])
    field = ".".join(str(part) for part in loc)
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = _without_password(error.get("input"))
    bounds = {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        return f"{field} must be {op} {ctx[key]}, got {value!r}"
    if kind == "extra_forbidden":
        return _unknown_key(loc, value, model)
    if kind == "missing":
        return f"{field} is required"
    if kind == "literal_error":
        expected = str(ctx.get("expected"))
        guess = nearest(str(value), re.findall(r"'([^']*)'", expected))
        hint = f"; did you mean {guess!r}?" if guess else ""
        return f"{field} must be one of {expected}, got {value!r}{hint}"
    if kind in _TYPE_WORDS:
        return f"{field} must be {_TYPE_WORDS[kind]}, got {value!r}"
    message = error["msg"]
    message = message.removeprefix("Value error, ")
    if isinstance(value, Mapping):  # a check across a section's fields: the message says all
        return f"{field}: {message}"
    return f"{field} {message}, got {value!r}"


def validate(data: Mapping[str, Any] | None, *, check_names: bool = True) -> Config:
    """Build a Config from plain data, raising ConfigError on the first problem.

    With check_names the strategy, model and data source names are checked against their
    registries too, and the strategy against the number of MC samples (this imports torch, so
    it is optional for quick checks). Sections in FOREIGN_SECTIONS are skipped.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"parameters must be a mapping of sections, got {type(data).__name__}")
    for section, content in data.items():
        if (
            section in Config.model_fields
            and content is not None
            and not isinstance(content, Mapping)
        ):
            raise ConfigError(f"{section} must be a mapping, got {content!r}")
    cleaned = {k: v for k, v in data.items() if v is not None and k not in FOREIGN_SECTIONS}
    try:
        config = Config.model_validate(cleaned)
    except ValidationError as exc:
        errors = exc.errors()
        fields = tuple(".".join(str(part) for part in e["loc"]) for e in errors)
        raise ConfigError("; ".join(_describe(e) for e in errors), fields=fields) from None
    if check_names:
        check_registry_names(config)
    return config


def scores_in_shards(config: Config) -> bool:
    """Whether a campaign's rounds score the pool in shards: on Dask workers, or read from
    disk shard by shard. The one rule: the checks here and the flow's scoring mode ask it."""
    from baldflow.data.registry import source_streams

    return config.scale.runner == "dask" or source_streams(config.data.source)


def _sharded_by(config: Config) -> str | None:
    """The setting that makes the rounds score the pool in shards, as a message names it."""
    if not scores_in_shards(config):
        return None
    if config.scale.runner == "dask":
        return "scale.runner dask"
    return f"data.source {config.data.source}"


def _refuse(problems: list, prefix: str = "acquisition.") -> None:
    """ConfigError for the first of a strategy's problems (acquisition.strategy.Problem)."""
    for problem in problems:
        field = f"{prefix}{problem.field}"
        # Where the fault is the pair (too few MC samples for this strategy), naming where the
        # field was set would blame the wrong line of a params file.
        raise ConfigError(
            f"{field} {problem.message}", fields=(field,) if problem.sole_cause else ()
        )


def check_strategy(config: Config) -> None:
    """Ask the campaign's strategy whether it can run with the acquisition parameters, where
    the pool is scored (in one process or in shards): MC samples, sharding, its own checks."""
    from baldflow.acquisition.strategies import get_strategy

    strategy = get_strategy(config.acquisition.strategy)
    _refuse(strategy.check(config.acquisition.model_dump(), sharded_by=_sharded_by(config)))


def check_sharding(config: Config) -> None:
    """Refuse a strategy that needs the whole pool in one process where it is scored in
    shards (the strategy says whether it can be: Strategy.shardable)."""
    from baldflow.acquisition.strategies import get_strategy

    sharded_by = _sharded_by(config)
    if sharded_by is not None:
        _refuse(get_strategy(config.acquisition.strategy).check({}, sharded_by=sharded_by))


def _named_plugins(config: Config) -> list[tuple[str, str, Any, str]]:
    """(seam, field, registry, name) of each plug-in the campaign names."""
    from baldflow.plugins import MODEL_PLUGINS, SOURCE_PLUGINS, STRATEGY_PLUGINS, TRAINER_PLUGINS

    return [
        ("model", "model.name", MODEL_PLUGINS, config.model.name),
        ("source", "data.source", SOURCE_PLUGINS, config.data.source),
        ("trainer", "training.trainer", TRAINER_PLUGINS, config.training.trainer),
        ("strategy", "acquisition.strategy", STRATEGY_PLUGINS, config.acquisition.strategy),
    ]


def check_registry_names(config: Config) -> None:
    """Check the names that registries resolve, listing the valid names on a mismatch.

    A name may also be an installed package's entry point or an import string
    (package.module:callable): those are only checked for their form here; preflight imports
    them and checks them against their seam's contract (preflight.check_plugins).
    """
    from baldflow.acquisition.strategies import STRATEGIES, canonical_name, suggest

    for _, field, registry, value in _named_plugins(config):
        if registry.knows(value):
            continue
        names = registry.names()
        # A bare score (`bald`) means that score under a selection mode, not the name
        # spelled most alike (`badge`): the registry knows which strategies those are.
        guesses = suggest(value) if field == "acquisition.strategy" else []
        if not guesses:
            guess = nearest(value, names)
            guesses = [guess] if guess else []
        hint = f"; did you mean {' or '.join(guesses)}?" if guesses else ""
        schemes = "".join(f", {scheme}:NAME" for scheme in sorted(registry.schemes))
        raise ConfigError(
            f"{field} must be one of {', '.join(names)}{schemes} or an import string "
            f"package.module:callable, got {value!r}{hint}",
            fields=(field,),
        )
    if canonical_name(config.acquisition.strategy) in STRATEGIES:
        # A plug-in strategy's own checks run once preflight has imported it.
        check_strategy(config)
    if config.training.device != "auto":
        import torch

        try:
            torch.device(config.training.device)
        except (RuntimeError, TypeError):
            raise ConfigError(
                f"training.device must be auto, cpu, cuda or cuda:N, got {config.training.device!r}"
            ) from None


def check_mc_samples(strategy: str, mc_samples: int, field: str = "acquisition.mc_samples") -> None:
    """Refuse a number of MC samples with which the strategy could not depend on the model.

    BALD and its kin measure disagreement between the MC samples: with one sample they are 0
    for every point, so the batch would be the first points of the pool (topk) or a uniform
    draw, while the records would call it BALD.
    """
    from baldflow.acquisition.strategies import get_strategy

    for problem in get_strategy(strategy).check({"mc_samples": mc_samples}):
        if problem.field == "mc_samples":
            raise ConfigError(f"{field} {problem.message}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one `section.key=value` override; the value is read as YAML (so 3 is an int)."""
    if "=" not in text:
        raise ConfigError(
            f"--set expects section.key=value, got {text!r} (e.g. --set acquisition.batch_size=20)"
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    path = key.split(".")
    if any(not part for part in path):
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    if len(path) < 2:
        # A bare key: name the section(s) that have it, or the nearest key that exists.
        homes = _sections_with(key)
        if not homes:
            every_key = sorted({k for s in Config.model_fields for k in _fields_at((s,)) or []})
            guess = nearest(key, every_key)
            homes = _sections_with(guess) if guess else []
        hint = (
            "; did you mean " + " or ".join(f"--set {home}={raw}" for home in homes) + "?"
            if homes
            else f" (sections: {', '.join(Config.model_fields)})"
        )
        raise ConfigError(f"--set expects section.key=value, got {text!r}{hint}")
    if path[0] not in Config.model_fields:
        guess = nearest(path[0], Config.model_fields)
        hint = f"; did you mean --set {'.'.join([guess, *path[1:]])}={raw}?" if guess else ""
        raise ConfigError(
            f"{path[0]} is not a known section{hint} (sections: {', '.join(Config.model_fields)})",
            fields=(path[0],),
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key} has an unreadable value {raw!r}: {exc}") from None
    return path, value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of the raw parameters with the `section.key=value` overrides applied."""
    # A deep copy: `--set data.options.x=1` writes into a nested mapping, which must not be
    # the caller's (a params.yaml read once and merged twice would keep the first override).
    merged: dict[str, Any] = copy.deepcopy(dict(data))
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {} if child is None else child
                if not isinstance(child, dict):
                    raise ConfigError(f"{'.'.join(path)}: {part} is not a section")
                node[part] = child
            node = child
        node[path[-1]] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"parameter file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"parameter file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"parameter file {path} must hold a mapping of sections")
    return data


def with_identity(data: Mapping[str, Any], identity: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the raw parameters with every identity parameter set as `identity` has it.

    `identity` is what a campaign recorded (Config.record(), its campaign.yaml: the identity,
    and in records written since, its length and tracking); what it does not record (device,
    threads, scale...) stays as `data` has it.
    Recorded keys the schema no longer has are skipped: nothing can use them, and the resume
    check (Workspace.check_campaign_params) compares only the keys of today's identity.
    """
    merged: dict[str, Any] = copy.deepcopy(dict(data))
    for section, values in identity.items():
        known = _fields_at((section,))
        if known is None or not isinstance(values, Mapping):
            continue
        target = merged.get(section)
        target = dict(target) if isinstance(target, Mapping) else {}
        for key, value in values.items():
            if key in known:
                target[key] = copy.deepcopy(value)
        merged[section] = target
    return merged


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    check_names: bool = True,
    identity: Mapping[str, Any] | None = None,
) -> Config:
    """Read a params.yaml (or the defaults when path is None), apply overrides, validate.

    With `identity` (what a campaign recorded, Config.record()) those replace the file's
    before the overrides apply: a campaign resumes as recorded, whatever the file says, and
    only an override changes its length or tracking.
    """
    data = read_yaml(path) if path is not None else {}
    if identity is not None:
        data = with_identity(data, identity)
    merged = apply_overrides(data, overrides)
    try:
        return validate(merged, check_names=check_names)
    except ConfigError as exc:
        if path is None or not exc.fields:
            raise
        # A wrong value that neither this command's --set nor the campaign's record gave sits
        # in the file: say which, or the user looks for it in the command line.
        typed = [parse_override(text)[0] for text in overrides]
        if identity is not None:
            typed += [
                [s, k] for s, keys in identity.items() if isinstance(keys, Mapping) for k in keys
            ]
        in_file = [field for field in exc.fields if not _from_overrides(field, typed)]
        if not in_file:
            raise
        where = f"{', '.join(in_file)} set in {path}"
        raise ConfigError(f"{exc} ({where})", fields=exc.fields) from None


def _from_overrides(field: str, typed: list[list[str]]) -> bool:
    """Whether an override set `field` or something inside or above it."""
    parts = field.split(".")
    return any(p[: len(parts)] == parts or parts[: len(p)] == p for p in typed)


def dump_yaml(config: Config) -> str:
    """The parameters as params.yaml text, sections in their documented order."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------- plug-ins
def plugin_record(config: Config) -> dict[str, dict[str, Any]]:
    """What a campaign records of the plug-ins it uses (campaign.yaml's `plugins`, every
    round's MLflow run): per seam, `Plugin.record()`; the model's weights file's sha256.

    Resolving imports the plug-ins: PluginError (one line) for one that does not load,
    WeightsError for a weights file that is missing.
    """
    from baldflow.models.weights import weights_sha256

    record = {
        seam: registry.resolve(name).record() for seam, _, registry, name in _named_plugins(config)
    }
    if config.model.weights is not None:
        record["model"]["weights_sha256"] = weights_sha256(config.model.weights)
    return record


def campaign_identity(config: Config) -> dict[str, Any]:
    """The identity a resume is checked against: the parameters (Config.identity()) and the
    plug-ins they name (plugin_record)."""
    return {**config.identity(), "plugins": plugin_record(config)}


def campaign_record(config: Config) -> dict[str, Any]:
    """What a campaign's campaign.yaml holds: Config.record() and its plug-ins."""
    return {**config.record(), "plugins": plugin_record(config)}
