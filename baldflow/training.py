"""Training with Adam and early stopping on validation accuracy; MC evaluation (accuracy, NLL)."""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch.nn.functional import nll_loss

from baldflow.inference import autocast_for, full_precision, iter_log_probs, model_device
from baldflow.models.base import BayesianModule
from baldflow.plugins import TRAINER_PLUGINS, PluginError


class TrainConfigError(ValueError):
    """A training parameter is out of range."""


@dataclass
class TrainConfig:
    """Training parameters.

    An epoch draws `epoch_samples` labeled points with replacement (the BatchBALD recipe: with
    20 labels a plain epoch would be a single step), or makes one shuffled pass when the labeled
    set is larger than that. Early stopping watches validation accuracy with `eval_mc_samples`
    MC samples and restores the best weights after `patience` epochs without improvement.
    `mixed_precision` runs the forward passes under bfloat16 autocast when the device is CUDA
    and does nothing elsewhere (`inference.autocast_for`).
    """

    learning_rate: float = 1e-3
    batch_size: int = 64
    epoch_samples: int = 4096
    max_epochs: int = 50
    patience: int = 3
    eval_mc_samples: int = 20
    weight_decay: float = 0.0
    device: str = "auto"
    eval_batch_size: int = 512
    mixed_precision: bool = False

    def __post_init__(self) -> None:
        positive = ("batch_size", "epoch_samples", "max_epochs", "patience", "eval_batch_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TrainConfigError(f"training.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.eval_mc_samples, int) or self.eval_mc_samples < 0:
            raise TrainConfigError(
                f"training.eval_mc_samples must be an integer >= 0, got {self.eval_mc_samples!r}"
            )
        if not self.learning_rate > 0:
            raise TrainConfigError(
                f"training.learning_rate must be > 0, got {self.learning_rate!r}"
            )
        if not self.weight_decay >= 0:
            raise TrainConfigError(f"training.weight_decay must be >= 0, got {self.weight_decay!r}")
        if not isinstance(self.mixed_precision, bool):
            raise TrainConfigError(
                f"training.mixed_precision must be true or false, got {self.mixed_precision!r}"
            )
        resolve_device(self.device)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' is CUDA when available, else CPU; anything else must be a torch device string."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise TrainConfigError(f"training.device {device!r} is not a device: {error}") from error


@dataclass
class FitResult:
    """What `fit` did: epochs run, the epoch whose weights were kept, and per-epoch history."""

    epochs: int
    best_epoch: int
    best_val_accuracy: float
    best_val_nll: float
    seconds: float
    device: str
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def dropout_generator_for(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """The generator training-mode dropout draws its masks from: `generator` itself on the CPU;
    elsewhere masks are drawn where the activations live, from that device's generator seeded
    by one draw of ours, so the run still follows from one seed."""
    if device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device).manual_seed(seed)


def _epoch_indices(n: int, epoch_samples: int, generator: torch.Generator) -> torch.Tensor:
    if n >= epoch_samples:
        return torch.randperm(n, generator=generator)
    return torch.randint(0, n, (epoch_samples,), generator=generator)


def fit(
    model: BayesianModule,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
) -> FitResult:
    """Train `model` in place; every random draw (epoch sampling, dropout masks, validation
    masks) comes from `generator`, so a CPU run is reproducible from its seed. The model ends
    in eval mode with the best validation weights loaded."""
    n = train_x.shape[0]
    if n == 0:
        raise TrainConfigError("cannot train on an empty labeled set (train_x has 0 rows)")
    if train_y.shape[0] != n:
        raise TrainConfigError(f"train_x has {n} rows but train_y has {train_y.shape[0]}")
    device = resolve_device(config.device)
    started = time.perf_counter()
    model.to(device)
    dropout_generator = dropout_generator_for(generator, device)
    train_x_dev, train_y_dev = train_x.to(device), train_y.to(device=device, dtype=torch.long)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    has_val = val_x.shape[0] > 0
    best = {"accuracy": -math.inf, "nll": math.nan, "epoch": 0}
    best_state = None
    history: list[dict] = []
    stale_epochs = 0
    model.set_train_generator(dropout_generator)
    try:
        for epoch in range(1, config.max_epochs + 1):
            model.train()
            order = _epoch_indices(n, config.epoch_samples, generator).to(device)
            batches = list(order.split(config.batch_size))
            # A one-row batch breaks BatchNorm in training mode and adds little; fold it away.
            if len(batches) > 1 and batches[-1].numel() == 1:
                batches.pop()
            total_loss = 0.0
            for batch in batches:
                # bfloat16 needs no GradScaler: its exponent range is float32's. The backward
                # pass runs outside autocast, as torch recommends.
                with autocast_for(device, config.mixed_precision):
                    log_probs_B_C = full_precision(model(train_x_dev[batch], 1)[:, 0])
                    loss = nll_loss(log_probs_B_C, train_y_dev[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach()) * batch.numel()
            row = {"epoch": epoch, "train_loss": total_loss / sum(b.numel() for b in batches)}
            if has_val:
                metrics = evaluate(
                    model,
                    val_x,
                    val_y,
                    config.eval_mc_samples,
                    generator,
                    batch_size=config.eval_batch_size,
                    mixed_precision=config.mixed_precision,
                )
                row.update(val_accuracy=metrics["accuracy"], val_nll=metrics["nll"])
                if metrics["accuracy"] > best["accuracy"]:
                    best = {"accuracy": metrics["accuracy"], "nll": metrics["nll"], "epoch": epoch}
                    best_state = copy.deepcopy(model.state_dict())
                    stale_epochs = 0
                else:
                    stale_epochs += 1
            history.append(row)
            if has_val and stale_epochs >= config.patience:
                break
    finally:
        model.set_train_generator(None)
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best["epoch"] = len(history)
    model.eval()
    return FitResult(
        epochs=len(history),
        best_epoch=best["epoch"],
        best_val_accuracy=best["accuracy"] if has_val else math.nan,
        best_val_nll=best["nll"],
        seconds=time.perf_counter() - started,
        device=str(device),
        history=history,
    )


def evaluate(
    model: BayesianModule,
    x: torch.Tensor,
    y: torch.Tensor,
    mc_samples: int,
    generator: torch.Generator,
    batch_size: int = 512,
    mixed_precision: bool = False,
) -> dict:
    """Accuracy and mean negative log-likelihood of the MC predictive distribution
    (log pbar = logsumexp_k log p_k - log K; mc_samples = 0 is the deterministic pass).
    `mixed_precision`: bfloat16 autocast of the forward passes on CUDA (`iter_log_probs`)."""
    n = x.shape[0]
    if n == 0:
        return {"accuracy": math.nan, "nll": math.nan, "n": 0}
    y = torch.as_tensor(y, dtype=torch.long).to(model_device(model))
    correct = 0
    nll_sum = 0.0
    chunks = iter_log_probs(
        model, x, mc_samples, generator, batch_size, mixed_precision=mixed_precision
    )
    with contextlib.closing(chunks):
        for start, log_probs_B_K_C in chunks:
            K = log_probs_B_K_C.shape[1]
            log_pbar_B_C = torch.logsumexp(log_probs_B_K_C.double(), dim=1) - math.log(K)
            y_B = y[start : start + log_pbar_B_C.shape[0]]
            correct += int((log_pbar_B_C.argmax(-1) == y_B).sum())
            nll_sum += float(-log_pbar_B_C.gather(1, y_B[:, None]).sum())
    return {"accuracy": correct / n, "nll": nll_sum / n, "n": n}


# ---------------------------------------------------------------------------- the trainer seam
@dataclass
class LabeledPart:
    """Rows of one part of the data as a trainer gets them: inputs `x` [n, *input_shape],
    labels `y` (int64 [n]) and the samples' ids (empty for the validation part)."""

    x: torch.Tensor
    y: torch.Tensor
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.x.shape[0])


class Classifier(torch.nn.Module):
    """The round's Bayesian model as a trainer sees it: `forward(x) -> logits [B, C]`.

    In training mode every dropout layer draws fresh masks (from the round's seeded generator,
    which baldflow sets before calling the trainer); in eval mode dropout is off. Its
    parameters are the Bayesian model's, so training it trains what scoring uses.
    """

    def __init__(self, bayesian: BayesianModule):
        super().__init__()
        self.bayesian = bayesian

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = 1 if self.training else 0
        logits_B_C = self.bayesian._run_head(self.bayesian.prefix(x), k)
        return logits_B_C


# Options of baldflow's own loop: the training section's fields (a campaign passes them).
BALDFLOW_LOOP_OPTIONS = (
    "learning_rate",
    "batch_size",
    "epoch_samples",
    "max_epochs",
    "patience",
    "eval_mc_samples",
    "weight_decay",
    "mixed_precision",
)


def baldflow_loop(
    model: Classifier,
    train: LabeledPart,
    val: LabeledPart,
    options: dict,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[torch.nn.Module, dict[str, float]]:
    """baldflow's trainer: Adam with early stopping on validation accuracy (`fit`), its options
    the training section's fields (BALDFLOW_LOOP_OPTIONS). Registered as the trainer
    `baldflow`, through the same seam as a plug-in trainer."""
    unknown = sorted(set(options) - set(BALDFLOW_LOOP_OPTIONS))
    if unknown:
        raise TrainConfigError(
            f"training.options.{unknown[0]} is not an option of baldflow's trainer (its options "
            f"are the training section's fields: {', '.join(BALDFLOW_LOOP_OPTIONS)})"
        )
    config = TrainConfig(**options, device=str(device))
    result = fit(model.bayesian, train.x, train.y, val.x, val.y, config, generator)
    metrics = {
        "epochs": float(result.epochs),
        "best_epoch": float(result.best_epoch),
        "best_val_accuracy": float(result.best_val_accuracy),
        "best_val_nll": float(result.best_val_nll),
    }
    return model, metrics


def _as_trainer(obj, spec: str):
    if not callable(obj):
        raise PluginError("trainer", spec, f"is a {type(obj).__name__}, not a callable")
    return obj


def _register_builtins() -> None:
    TRAINER_PLUGINS.register("baldflow", baldflow_loop, builtin=True)
    TRAINER_PLUGINS.set_adapter(
        _as_trainer,
        "callable(model, train, val, options, generator, device) -> (model, metrics dict)",
    )


_register_builtins()


def run_trainer(
    spec: str,
    model: BayesianModule,
    train: LabeledPart,
    val: LabeledPart,
    options: dict,
    generator: torch.Generator,
    device: torch.device,
) -> dict[str, float]:
    """Train `model` in place with the trainer `spec` names and return its metrics.

    The trainer gets the model as a `Classifier` on `device`, in training mode, its dropout
    drawing from the round's generator (no global RNG). What it returns is checked against the
    contract: a (model, metrics) pair, the model this one or one with the same parameters
    (copied back), metrics a mapping of names to numbers. PluginError otherwise, in one line.
    """
    plugin = TRAINER_PLUGINS.resolve(spec)
    model.to(device)
    dropout_generator = dropout_generator_for(generator, device)
    classifier = Classifier(model)
    classifier.train()
    model.set_train_generator(dropout_generator)
    try:
        returned = plugin.obj(classifier, train, val, dict(options), generator, device)
    finally:
        model.set_train_generator(None)
    problem = _broken_contract(returned, classifier)
    if problem:
        raise PluginError("trainer", spec, problem, package=plugin.package or None)
    trained, metrics = returned
    if trained is not classifier and trained is not model:
        model.load_state_dict(trained.state_dict())
    model.eval()
    return {str(k): float(v) for k, v in metrics.items()}


def _broken_contract(returned, classifier: Classifier) -> str | None:
    """What is wrong with a trainer's return value, or None when it keeps the contract."""
    if not (isinstance(returned, tuple) and len(returned) == 2):
        what = type(returned).__name__
        return f"returned a {what}, not the pair (model, metrics) a trainer returns"
    trained, metrics = returned
    if not isinstance(trained, torch.nn.Module):
        return f"returned a {type(trained).__name__} as its model, not a torch.nn.Module"
    if trained is not classifier and trained is not classifier.bayesian:
        mine = {k: tuple(v.shape) for k, v in classifier.bayesian.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in trained.state_dict().items()}
        if mine != theirs:
            return "returned another model than the one it was given (other parameters)"
    if not isinstance(metrics, Mapping):
        return f"returned a {type(metrics).__name__} as its metrics, not a dict of numbers"
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            return f"returned a metric named {key!r}; names must be non-empty text"
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"returned metric {key!r} = {value!r}, not a number"
    return None
