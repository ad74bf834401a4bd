"""What a campaign asks of its pool, wherever the pool's rows are held.

A campaign's pool is held in memory (`baldflow.data.memory_pool.MemoryPool`, over a
`DataSplits`) or read from disk by rows (`baldflow.data.streamed_pool.StreamedPool`, over a
`DiskSource`: a pool directory, an .npz or an image folder). Scoring, training, the oracle, the
hand-off and the report use `CampaignPool` only; `baldflow.data.campaign.open_campaign_pool`
opens either kind from a campaign's data parameters.

Sample ids are the source's stable ids. Whatever holds the rows, the model inputs of given ids
come back in the order asked, so every caller sees the same tensors from either kind.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class CampaignPool(Protocol):
    """A campaign's pool to acquire from, with its validation and test sets."""

    @property
    def streamed(self) -> bool:
        """True when the pool is never loaded whole: it is scored shard by shard from
        `shard_path`, and nothing may ask it for every row at once (`inputs` of all its ids,
        BatchBALD's shadow batch over the whole pool)."""
        ...

    @property
    def pool_size(self) -> int:
        """The number of samples in the pool, labeled or not."""
        ...

    @property
    def pool_ids(self) -> list[str]:
        """Every sample id, in pool order (a streamed pool reads them all from disk)."""
        ...

    @property
    def initial_ids(self) -> list[str]:
        """The initial labeled set (round 0), as chosen when the pool was opened."""
        ...

    @property
    def class_names(self) -> list[str]:
        """The class names; label c names class_names[c]."""
        ...

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample as the model takes it, e.g. (1, 28, 28)."""
        ...

    @property
    def num_classes(self) -> int:
        """len(class_names)."""
        ...

    @property
    def manifest(self) -> dict | None:
        """The description of the pool's files that every round versions beside its labels
        (`baldflow.data.pool_formats.manifest`), None for a pool held in memory."""
        ...

    def unlabeled_ids(self, labeled_ids: Collection[str]) -> list[str]:
        """The pool's ids that are not in `labeled_ids`, in pool order."""
        ...

    def inputs(self, sample_ids: Sequence[str]) -> torch.Tensor:
        """The model inputs [n, *input_shape] of these samples, in the order given (an id may
        repeat): rows of the in-memory tensor as it is, float32 rows read from disk. KeyError
        for an id not in the pool."""
        ...

    def known_labels(self, sample_ids: Sequence[str]) -> torch.Tensor:
        """The labels the pool holds back for these samples, int64 in the order given, -1 where
        the label is unknown: what the simulated oracle answers. KeyError for an id not in
        the pool."""
        ...

    def evaluation_set(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of the "val" or "test" split, both loaded in full."""
        ...

    def images(self, sample_ids: Sequence[str]) -> torch.Tensor | None:
        """`inputs` of these samples for a contact sheet, or None when no ids are given or the
        samples are not images (see `shows_as_images`)."""
        ...

    def shard_path(self, scratch: Path) -> Path:
        """Where shard workers read the pool by row ranges
        (`baldflow.data.pool_formats.open_pool`): a pool on disk gives its own path and leaves
        `scratch` alone; a pool in memory writes itself to the directory `scratch` once
        (`baldflow.data.disk_source.spill_pool`: rewritten only when its content changed) and
        gives that."""
        ...


def shows_as_images(input_shape: Sequence[int]) -> bool:
    """Whether samples of this shape are images a contact sheet can draw: [C, H, W] with one
    (gray) or three (RGB) channels, the rule of `baldflow.figures.thumbnails.is_image_batch`."""
    return len(input_shape) == 3 and input_shape[0] in (1, 3)
