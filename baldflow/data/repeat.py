"""Pool repetition with Gaussian noise (RepeatedMNIST) and the balanced initial labeled set."""

from __future__ import annotations

import re

import torch

from baldflow.data.splits import (
    DataSourceError,
    DataSplits,
    balanced_initial_indices,
    derived_generator,
)

# Copy c >= 1 of sample "<id>" is "<id>~r<c>"; copy 0 keeps the original id, so ids chosen before
# repetition (the initial labeled set) still name pool rows after it.
REPEAT_SEPARATOR = "~r"
_REPEAT_ID = re.compile(r"^(?P<origin>.*)~r(?P<copy>[1-9][0-9]*)$")


def repeat_id(sample_id: str, copy: int) -> str:
    return sample_id if copy == 0 else f"{sample_id}{REPEAT_SEPARATOR}{copy}"


def split_repeat_id(sample_id: str) -> tuple[str, int]:
    """(original id, copy number) of a pool id made by `repeat_pool`."""
    match = _REPEAT_ID.match(sample_id)
    if match is None:
        return sample_id, 0
    return match.group("origin"), int(match.group("copy"))


def repeat_pool(splits: DataSplits, repeat: int, noise_std: float, seed: int) -> DataSplits:
    """`repeat` copies of the pool, each with isotropic N(0, noise_std^2) noise added to the
    (already normalised) features; validation and test sets are left alone.

    Every copy, copy 0 included, gets its own noise (as in RepeatedMNIST); the noise of copy c
    depends only on (seed, c), not on `repeat`. Copy c of sample "<id>" is "<id>" for c = 0 and
    "<id>~r<c>" otherwise (`split_repeat_id` inverts this). Rows are ordered copy-major.
    """
    if not isinstance(repeat, int) or repeat < 1:
        raise DataSourceError(f"repeat must be an integer >= 1, got {repeat!r}")
    if noise_std < 0:
        raise DataSourceError(f"noise_std must be >= 0, got {noise_std}")
    if repeat == 1 and noise_std == 0:
        return splits
    clash = next((i for i in splits.pool_ids if _REPEAT_ID.match(i)), None)
    if repeat > 1 and clash is not None:
        raise DataSourceError(
            f"pool id {clash!r} already looks like a repeated copy; cannot repeat this pool again"
        )
    copies_x, ids = [], []
    for copy in range(repeat):
        x = splits.pool_x
        if noise_std > 0:
            generator = derived_generator(seed, f"repeat-noise/{copy}")
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x = x + noise_std * noise
        copies_x.append(x)
        ids.extend(repeat_id(i, copy) for i in splits.pool_ids)
    info = dict(splits.info, repeat=repeat, noise_std=noise_std, repeat_seed=seed)
    return DataSplits(
        pool_x=torch.cat(copies_x),
        pool_y=splits.pool_y.repeat(repeat),
        pool_ids=ids,
        val_x=splits.val_x,
        val_y=splits.val_y,
        test_x=splits.test_x,
        test_y=splits.test_y,
        class_names=list(splits.class_names),
        info=info,
    )


def initial_then_repeat(
    splits: DataSplits,
    *,
    repeat: int,
    noise_std: float,
    initial_per_class: int,
    seed: int,
) -> tuple[DataSplits, list[str]]:
    """The loaded `splits` made a campaign's pool: the balanced initial labeled set chosen
    first, then the pool repeated. Every in-memory source goes through here (`prepare_pool`,
    `DataSource.open`), so a pool and its initial ids depend on the data and the seed alone."""
    initial = balanced_initial_indices(
        splits.pool_y,
        initial_per_class,
        derived_generator(seed, "initial-labeled-set"),
        num_classes=splits.num_classes,
    )
    initial_ids = [splits.pool_ids[i] for i in initial.tolist()]
    return repeat_pool(splits, repeat, noise_std, seed), initial_ids
