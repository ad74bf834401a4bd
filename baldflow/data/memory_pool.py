"""A campaign's pool held in memory: a `CampaignPool` over a `DataSplits`."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import torch

from baldflow.data.disk_source import spill_pool
from baldflow.data.pool import shows_as_images
from baldflow.data.splits import DataSplits


class MemoryPool:
    """A pool whose rows are all in memory (`splits.pool_x`), read by id through a dict from
    sample id to row. `splits` and `row_of` stay public for code that works on the tensors
    themselves (tests, benchmarks); campaign code asks the `CampaignPool` members."""

    streamed = False
    manifest = None

    def __init__(self, splits: DataSplits, initial_ids: Sequence[str]) -> None:
        self.splits = splits
        # DataSplits refuses duplicate ids, so every id has exactly one row here.
        self.row_of = {sid: i for i, sid in enumerate(splits.pool_ids)}
        self._initial_ids = list(initial_ids)

    def __repr__(self) -> str:
        return f"MemoryPool({self.pool_size} samples, input shape {self.input_shape})"

    @property
    def pool_size(self) -> int:
        return len(self.splits.pool_ids)

    @property
    def pool_ids(self) -> list[str]:
        return list(self.splits.pool_ids)

    @property
    def initial_ids(self) -> list[str]:
        return list(self._initial_ids)

    @property
    def class_names(self) -> list[str]:
        return list(self.splits.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.splits.input_shape)

    @property
    def num_classes(self) -> int:
        return self.splits.num_classes

    def rows(self, sample_ids: Sequence[str]) -> torch.Tensor:
        """The pool rows of these sample ids, in the order given (KeyError for an unknown id)."""
        return torch.tensor([self.row_of[sid] for sid in sample_ids], dtype=torch.long)

    def unlabeled_ids(self, labeled_ids: Collection[str]) -> list[str]:
        return [sid for sid in self.splits.pool_ids if sid not in labeled_ids]

    def inputs(self, sample_ids: Sequence[str]) -> torch.Tensor:
        return self.splits.pool_x[self.rows(sample_ids)]

    def known_labels(self, sample_ids: Sequence[str]) -> torch.Tensor:
        return self.splits.pool_y[self.rows(sample_ids)].to(torch.int64)

    def evaluation_set(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self.splits, f"{which}_x"), getattr(self.splits, f"{which}_y")

    def images(self, sample_ids: Sequence[str]) -> torch.Tensor | None:
        if not sample_ids or not shows_as_images(self.input_shape):
            return None
        return self.inputs(sample_ids)

    def shard_path(self, scratch: Path) -> Path:
        s = self.splits
        spill_pool(s.pool_x, s.pool_y, list(s.pool_ids), list(s.class_names), scratch).close()
        return Path(scratch)
