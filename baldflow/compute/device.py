"""Where a round's compute runs: torch's CPU threads, and what mixed precision does here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from baldflow.config import Config


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run a block with `count` torch CPU threads (0 leaves torch's choice), then restore."""
    before = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def mixed_precision_note(config: Config) -> str | None:
    """What a run says once when training.mixed_precision is set but cannot apply (no CUDA
    device), or None: on the CPU the flag changes nothing, so the batch is the full-precision
    batch."""
    from baldflow.training import resolve_device

    if not config.training.mixed_precision:
        return None
    device = resolve_device(config.training.device)
    if device.type == "cuda":
        return None
    where = "the CPU" if device.type == "cpu" else str(device)
    note = f"training.mixed_precision applies on CUDA only; this run uses {where}, full precision"
    if config.scale.runner == "dask" and config.training.device == "auto":
        # `auto` resolves on each worker: workers that have a GPU still use bfloat16 there.
        note += " here (Dask workers with a CUDA device use it)"
    return note
