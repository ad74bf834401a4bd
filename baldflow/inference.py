"""Streamed MC dropout prediction over a pool: full log-probabilities for a subset, or scores
reduced chunk by chunk into `scores_N` in O(N) memory."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

from baldflow.models.base import BayesianModule

# The head sees chunk_size * K rows, so the automatic chunk size keeps that product near
# HEAD_ROW_BUDGET: activation memory then stays the same whatever K is. MAX_CHUNK_INPUTS bounds
# the prefix's activations; beyond a few hundred inputs bigger chunks stop paying off anyway.
HEAD_ROW_BUDGET = 10240
MAX_CHUNK_INPUTS = 512


def auto_chunk_size(mc_samples: int) -> int:
    """Inputs per chunk for K = mc_samples: min(512, 10240 // K), at least 1."""
    return max(1, min(MAX_CHUNK_INPUTS, HEAD_ROW_BUDGET // max(mc_samples, 1)))


class InferenceError(ValueError):
    """Invalid arguments to a prediction or scoring pass."""


def model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def autocast_for(
    device: torch.device | str, mixed_precision: bool
) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in: bfloat16 autocast on CUDA when `mixed_precision`
    (training.mixed_precision) asks for it, else a nullcontext.

    bfloat16 has float32's exponent range, so logits cannot overflow and training needs no
    GradScaler; autocast runs log_softmax and nll_loss in float32 on CUDA. On any other device
    nothing changes: a CPU pass is the full-precision pass, bit for bit.
    """
    if mixed_precision and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def full_precision(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` as float32 if autocast left it in a half type; otherwise `tensor` itself (no
    copy), so scores and selection always see float32 log-probabilities."""
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float()
    return tensor


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm uses running statistics, dropout uses the consistent masks) for the
    duration, restoring the previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _progress_bar(enabled: bool):
    """A rich progress bar on stderr, disabled when not asked for or when stderr is not a
    terminal (logs, CI), where redraws would only add noise."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=sys.stderr)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
        transient=True,
    )


def _checked_pass(
    x: torch.Tensor, mc_samples: int, chunk_size: int | None, indices: Any
) -> tuple[int, torch.Tensor | None, int]:
    """A streamed pass's (chunk size, row indices, row count), or an InferenceError."""
    if mc_samples < 0:
        raise InferenceError(f"mc_samples must be >= 0, got {mc_samples}")
    if chunk_size is None:
        chunk_size = auto_chunk_size(mc_samples)
    if chunk_size < 1:
        raise InferenceError(f"chunk_size must be >= 1, got {chunk_size}")
    if indices is not None:
        indices = torch.as_tensor(indices, dtype=torch.long).flatten()
    n = x.shape[0] if indices is None else int(indices.numel())
    return chunk_size, indices, n


def iter_log_probs(
    model: BayesianModule,
    x: torch.Tensor,
    mc_samples: int,
    generator: torch.Generator,
    chunk_size: int | None = None,
    indices: torch.Tensor | None = None,
    progress: bool = False,
    description: str = "MC prediction",
    mixed_precision: bool = False,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (offset, log_probs_B_K_C) chunk by chunk, float32, on the model's device.

    One set of K masks is drawn from `generator` at the start and used for every chunk, so the
    log-probabilities do not depend on `chunk_size` (None: `auto_chunk_size(mc_samples)`).
    `mc_samples = 0` is the deterministic pass (K = 1, dropout off). `indices` restricts the
    pass to those rows of `x`, in that order. `mixed_precision` runs the forward passes under
    bfloat16 autocast when the model is on CUDA (`autocast_for`); the consumer of a chunk never
    runs under autocast, so scores are computed in full precision.
    The model stays in eval and inference mode until the iterator is exhausted or closed: wrap
    it in `contextlib.closing` when the loop may stop early or raise.
    """
    chunk_size, indices, n = _checked_pass(x, mc_samples, chunk_size, indices)
    device = model_device(model)
    bar = _progress_bar(progress and n > chunk_size)
    with eval_mode(model), torch.inference_mode(), bar:
        task = bar.add_task(description, total=n)
        if mc_samples > 0:
            model.resample_masks(mc_samples, generator)
        for start in range(0, n, chunk_size):
            rows = slice(start, start + chunk_size)
            x_B = x[rows] if indices is None else x[indices[rows]]
            with autocast_for(device, mixed_precision):
                log_probs_B_K_C = model(x_B.to(device, non_blocking=True), mc_samples)
            yield start, full_precision(log_probs_B_K_C)
            bar.advance(task, x_B.shape[0])


def predict_log_probs(
    model: BayesianModule,
    x: torch.Tensor,
    mc_samples: int,
    generator: torch.Generator,
    chunk_size: int | None = None,
    indices: torch.Tensor | None = None,
    progress: bool = False,
    mixed_precision: bool = False,
) -> torch.Tensor:
    """`log_probs_N_K_C` (float32, CPU) of all of `x`, or of the rows `indices` in that order
    (e.g. BatchBALD candidates). Memory is N*K*C; use `score_pool` for a whole large pool."""
    n = x.shape[0] if indices is None else int(torch.as_tensor(indices).numel())
    out: torch.Tensor | None = None
    chunks = iter_log_probs(
        model, x, mc_samples, generator, chunk_size, indices, progress, "MC log-probs",
        mixed_precision,
    )  # fmt: skip
    with contextlib.closing(chunks):
        for start, log_probs_B_K_C in chunks:
            if out is None:
                shape = (n, *log_probs_B_K_C.shape[1:])
                out = torch.empty(shape, dtype=log_probs_B_K_C.dtype)
            out[start : start + log_probs_B_K_C.shape[0]] = log_probs_B_K_C.cpu()
    if out is None:
        # An empty request still has a well-defined shape when the model can tell us C.
        num_classes = getattr(model, "spec", {}).get("num_classes", 0)
        out = torch.empty((0, max(mc_samples, 1), num_classes))
    return out


def _score_function(score: str | Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    if callable(score):
        return score
    from baldflow.acquisition.scores import get_score

    return get_score(score)


def score_pool(
    model: BayesianModule,
    x: torch.Tensor,
    score: str | Callable[[torch.Tensor], torch.Tensor],
    mc_samples: int,
    generator: torch.Generator,
    chunk_size: int | None = None,
    progress: bool = False,
    indices: torch.Tensor | None = None,
    mixed_precision: bool = False,
) -> torch.Tensor:
    """Float64 `scores_N` of every row of `x` (or of `indices`) under acquisition score `score`
    (a name from `baldflow.acquisition.scores.SCORES` or a function of log_probs_N_K_C).

    Streams: each chunk's log-probabilities are reduced to scores and dropped, so memory is
    O(N) plus one chunk's activations, which the automatic chunk size keeps independent of K.
    One set of K masks serves the whole pass.
    """
    score_fn = _score_function(score)
    n = x.shape[0] if indices is None else int(torch.as_tensor(indices).numel())
    scores_N = torch.empty(n, dtype=torch.float64)
    chunks = iter_log_probs(
        model, x, mc_samples, generator, chunk_size, indices, progress, "Scoring pool",
        mixed_precision,
    )  # fmt: skip
    with contextlib.closing(chunks):
        for start, log_probs_B_K_C in chunks:
            chunk_scores = score_fn(log_probs_B_K_C).to("cpu", torch.float64)
            scores_N[start : start + log_probs_B_K_C.shape[0]] = chunk_scores
    return scores_N


def embed_pool(
    model: BayesianModule,
    x: torch.Tensor,
    mc_samples: int,
    generator: torch.Generator,
    chunk_size: int | None = None,
    indices: torch.Tensor | None = None,
    progress: bool = False,
    mixed_precision: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(`features_N_D` float32, `probs_N_C` float64) of every row of `x` (or of `indices`).

    `features_N_D` are `model.embed` (penultimate features of the dropout-off network);
    `probs_N_C` is the MC-averaged predictive (1/K) sum_k p(y|x, w_k) over K = mc_samples masks
    (0: the deterministic pass). The masks are drawn from `generator` exactly as `score_pool`
    draws them, so with the same generator state they are the round's scoring masks and BADGE's
    predicted labels agree with the predictive the scores saw. Streams like `score_pool`: the
    prefix runs once per input for both outputs; memory is N*(D+C) plus one chunk.
    `mixed_precision`: bfloat16 autocast on CUDA, as in `iter_log_probs`.
    """
    chunk_size, indices, n = _checked_pass(x, mc_samples, chunk_size, indices)
    device = model_device(model)
    features_N_D: torch.Tensor | None = None
    probs_N_C: torch.Tensor | None = None
    bar = _progress_bar(progress and n > chunk_size)
    with eval_mode(model), torch.inference_mode(), bar:
        task = bar.add_task("Embedding pool", total=n)
        if mc_samples > 0:
            model.resample_masks(mc_samples, generator)
        for start in range(0, n, chunk_size):
            rows = slice(start, start + chunk_size)
            x_B = x[rows] if indices is None else x[indices[rows]]
            with autocast_for(device, mixed_precision):
                features_B_D, log_probs_B_K_C = model.embed_and_log_probs(
                    x_B.to(device, non_blocking=True), mc_samples
                )
            log_probs_B_K_C = full_precision(log_probs_B_K_C)
            if features_N_D is None or probs_N_C is None:
                features_N_D = torch.empty((n, features_B_D.shape[1]), dtype=torch.float32)
                probs_N_C = torch.empty((n, log_probs_B_K_C.shape[2]), dtype=torch.float64)
            end = start + x_B.shape[0]
            features_N_D[start:end] = features_B_D.to("cpu", torch.float32)
            # Averaged in float64 so that near-certain predictions keep their small margins.
            probs_N_C[start:end] = log_probs_B_K_C.to("cpu", torch.float64).exp().mean(1)
            bar.advance(task, x_B.shape[0])
    if features_N_D is None or probs_N_C is None:
        # An empty pool: D is known from the last linear layer, C from the spec.
        num_classes = getattr(model, "spec", {}).get("num_classes", 0)
        features_N_D = torch.empty((0, model.last_linear().in_features), dtype=torch.float32)
        probs_N_C = torch.empty((0, num_classes), dtype=torch.float64)
    return features_N_D, probs_N_C
