"""The `benchmark` section of params.yaml and the campaign parameters it implies per strategy.

The campaign schema leaves this section to this module: load_benchmark and validate_benchmark
check it like the campaign sections, unknown keys and out-of-range values failing with a
ConfigError that names the field and the value. The acquisition, model and training fields are
the campaign's own (baldflow.config), so the two cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from baldflow.config import (
    AcquisitionSettings,
    CampaignConfig,
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainingConfig,
    _describe,
    check_mc_samples,
    read_yaml,
    validate,
)

SECTION = "benchmark"
DEFAULT_STRATEGIES = (
    "random",
    "topk-bald",
    "power-bald",
    "softmax-bald",
    "softrank-bald",
    "batchbald",
    # Beyond the paper: EPIG's stochastic batch, the embedding baselines the authors compared
    # against (BADGE) or that the literature often uses (CoreSet), an annealed PowerBALD and
    # stochastic BatchBALD.
    "power-epig",
    "badge",
    "coreset",
    "annealed-power-bald",
    "stochastic-batchbald",
)
# The authors' own coldness grid for PowerBALD ({1/4, 1, 4, 8, 16}, science.md).
DEFAULT_COLDNESS_GRID = (0.25, 1, 4, 8, 16)


def _default_data() -> DataConfig:
    # The CPU-sized analogue of RepeatedMNIST x3: digits, three noisy copies of the pool.
    return DataConfig(source="digits", repeat=3, noise_std=0.1)


class BenchmarkConfig(AcquisitionSettings):
    """What one strategy comparison runs: every strategy x seed on the same data and model.

    The acquisition fields (batch_size, coldness, mc_samples, ...) come from the campaign's
    AcquisitionSettings and sit at the top of the section, where dvc.yaml's params name them.
    """

    strategies: list[str] = Field(default_factory=lambda: list(DEFAULT_STRATEGIES), min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    # Labels needed to reach this test accuracy is the headline number of the report.
    target_accuracy: float = Field(0.9, gt=0.0, le=1.0)
    initial_per_class: int = CampaignConfig.model_fields["initial_per_class"]
    # The largest labeled set a model is trained and evaluated on; rounds follow from it.
    label_budget: int = Field(160, ge=1)
    data: DataConfig = Field(default_factory=_default_data)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    # The coldness ablation (dvc stage `coldness`): this strategy once per beta x seed, all else
    # as above. Write whole betas without ".0" (1, not 1.0): dvc.yaml names each campaign's
    # files with the value as written (the report also looks for the ".0" spelling).
    coldness_grid: list[float] = Field(
        default_factory=lambda: list(DEFAULT_COLDNESS_GRID), min_length=1
    )
    coldness_strategy: str = "power-bald"
    experiment: str = Field("baldflow-comparison", min_length=1)
    # null: a SQLite store under the project's mlflow/ directory.
    mlflow_uri: str | None = None

    @field_validator("strategies")
    @classmethod
    def _unique_strategies(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("must not repeat a strategy")
        return value

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("must not repeat a seed")
        if any(seed < 0 for seed in value):
            raise ValueError("must be seeds >= 0")
        return value

    @field_validator("coldness_grid")
    @classmethod
    def _coldness_grid(cls, value: list[float]) -> list[float]:
        if len(set(value)) != len(value):
            raise ValueError("must not repeat a coldness")
        if any(not (beta >= 0 and math.isfinite(beta)) for beta in value):
            raise ValueError("must be finite coldnesses >= 0")
        return value

    def initial_size(self, num_classes: int) -> int:
        return self.initial_per_class * num_classes

    def rounds(self, num_classes: int) -> int:
        """Acquisition rounds so that the last trained model sees at most label_budget labels.

        Round r trains on initial + (r - 1) * batch_size labels, then acquires a batch.
        """
        initial = self.initial_size(num_classes)
        if self.label_budget < initial:
            raise ConfigError(
                f"benchmark.label_budget must be >= the initial labeled set "
                f"({self.initial_per_class} per class x {num_classes} classes = {initial}), "
                f"got {self.label_budget}"
            )
        return (self.label_budget - initial) // self.batch_size + 1

    def fingerprint(self) -> str:
        """A short hash of everything but the lists and the target, for campaign names.

        It names the campaigns, so the runs of one setting are easy to find in MLflow. Only what
        changes a campaign's batches or models is in it: shadow_batchbald adds evidence metrics
        but never changes a batch, and the ablation's grid and strategy only choose which
        campaigns run (an ablation campaign's own coldness is in its fingerprint).
        """
        data = self.model_dump(mode="json")
        for key in (
            "strategies",
            "seeds",
            "target_accuracy",
            "experiment",
            "mlflow_uri",
            "coldness_grid",
            "coldness_strategy",
        ):
            data.pop(key)
        # Where, on how many threads, in what precision (bfloat16 applies on CUDA only, as the
        # device does) and in what chunks it runs is not part of the setting compared.
        data["training"].pop("device")
        data["training"].pop("num_threads", None)
        data["training"].pop("mixed_precision", None)
        data.pop("chunk_size")
        data.pop("shadow_batchbald")  # evidence only: the batches do not change
        text = json.dumps(data, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:6]


def validate_benchmark(
    data: Mapping[str, Any] | None, *, check_names: bool = True
) -> BenchmarkConfig:
    """Build a BenchmarkConfig from the raw `benchmark` section, raising ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{SECTION} must be a mapping, got {data!r}")
    try:
        bench = BenchmarkConfig.model_validate(dict(data))
    except ValidationError as exc:
        messages = []
        for error in exc.errors():
            error = dict(error)
            error["loc"] = (SECTION, *error["loc"])
            messages.append(_describe(error))
        raise ConfigError("; ".join(messages)) from None
    if check_names:
        _check_names(bench)
    return bench


def _check_names(bench: BenchmarkConfig) -> None:
    from baldflow.acquisition.strategies import STRATEGY_NAMES
    from baldflow.data import SOURCES
    from baldflow.models import MODELS

    for index, name in enumerate(bench.strategies):
        if name not in STRATEGY_NAMES:
            raise ConfigError(
                f"{SECTION}.strategies.{index} must be one of {', '.join(STRATEGY_NAMES)}, "
                f"got {name!r}"
            )
    for field, value, valid in (
        ("model.name", bench.model.name, MODELS),
        ("data.source", bench.data.source, SOURCES),
    ):
        if value not in valid:
            raise ConfigError(
                f"{SECTION}.{field} must be one of {', '.join(sorted(valid))}, got {value!r}"
            )
    if bench.coldness_strategy not in STRATEGY_NAMES:
        raise ConfigError(
            f"{SECTION}.coldness_strategy must be one of {', '.join(STRATEGY_NAMES)}, "
            f"got {bench.coldness_strategy!r}"
        )
    # The ablation's strategy is checked when its campaigns are built (campaign_params): a
    # comparison of entropy-only strategies may well run with one MC sample.
    for name in bench.strategies:
        check_mc_samples(name, bench.mc_samples, field=f"{SECTION}.mc_samples")


def load_benchmark(params_path: str | Path = "params.yaml") -> BenchmarkConfig:
    """The benchmark section of a params file (defaults when the file has none)."""
    return validate_benchmark(read_yaml(params_path).get(SECTION))


def campaign_name(strategy: str, seed: int, fingerprint: str, suffix: str = "") -> str:
    """`<strategy>-seed<seed>-<fingerprint>[-<suffix>]`, a valid campaign name.

    MLflow reopens a campaign's parent run by name, so each execution of a benchmark campaign
    gets its own suffix (run_one uses the UTC start time): re-running never mixes the rounds of
    two executions in one parent run, and the fingerprint still groups equal settings.
    """
    name = f"{strategy}-seed{seed}-{fingerprint}"
    return f"{name}-{suffix}" if suffix else name


def campaign_params(
    bench: BenchmarkConfig,
    strategy: str,
    seed: int,
    *,
    num_classes: int,
    mlflow_uri: str,
    suffix: str = "",
) -> dict[str, Any]:
    """The params.yaml of one benchmark campaign, validated by the campaign schema."""
    if strategy not in bench.strategies and strategy != bench.coldness_strategy:
        raise ConfigError(
            f"strategy {strategy!r} is not in {SECTION}.strategies ({', '.join(bench.strategies)})"
        )
    if seed not in bench.seeds:
        raise ConfigError(f"seed {seed} is not in {SECTION}.seeds ({bench.seeds})")
    params = {
        "campaign": {
            "name": campaign_name(strategy, seed, bench.fingerprint(), suffix),
            "seed": seed,
            "rounds": bench.rounds(num_classes),
            "initial_per_class": bench.initial_per_class,
        },
        "data": bench.data.model_dump(mode="json"),
        "model": bench.model.model_dump(mode="json"),
        "training": bench.training.model_dump(mode="json"),
        "acquisition": {
            "strategy": strategy,
            **{name: getattr(bench, name) for name in AcquisitionSettings.model_fields},
        },
        "oracle": {"kind": "simulated"},
        # Hundreds of benchmark rounds compare strategies; none of their models is served.
        "tracking": {
            "mlflow_uri": mlflow_uri,
            "experiment": bench.experiment,
            "register_model": False,
        },
    }
    # The campaign schema has the last word: whatever it refuses fails here, before any work.
    return validate(params).to_dict()
