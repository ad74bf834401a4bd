"""A campaign's pool read from disk by rows: a `CampaignPool` over a `DiskSource`."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import torch

from baldflow.data.disk_source import DiskSource
from baldflow.data.object_store import ObjectURL
from baldflow.data.pool import shows_as_images


class StreamedPool:
    """A pool larger than memory: its rows stay on disk (a pool directory, an .npz or an image
    folder) and are read by id or by row range; only validation and test are loaded.

    Reads by id go through the pool's id index (16 bytes a row, built on first use) rather
    than a dict of every id. `manifest` is taken when the pool is opened, so every round
    versions the same description of the files it scored."""

    streamed = True

    def __init__(self, source: DiskSource, manifest: dict) -> None:
        self.source = source
        self._manifest = manifest

    def __repr__(self) -> str:
        return f"StreamedPool({str(self.source.pool_dir)!r}, {self.pool_size} samples)"

    @property
    def manifest(self) -> dict:
        return self._manifest

    @property
    def pool_size(self) -> int:
        return self.source.count

    @property
    def pool_ids(self) -> list[str]:
        return self.source.pool.ids(0, self.source.count)

    @property
    def initial_ids(self) -> list[str]:
        return list(self.source.initial_ids)

    @property
    def class_names(self) -> list[str]:
        return list(self.source.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.source.input_shape)

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    def unlabeled_ids(self, labeled_ids: Collection[str]) -> list[str]:
        return [sid for sid in self.pool_ids if sid not in labeled_ids]

    def inputs(self, sample_ids: Sequence[str]) -> torch.Tensor:
        return self.source.pool.rows_by_ids(list(sample_ids))

    def known_labels(self, sample_ids: Sequence[str]) -> torch.Tensor:
        return self.source.pool.labels_by_ids(list(sample_ids))

    def evaluation_set(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self.source, f"{which}_x"), getattr(self.source, f"{which}_y")

    def images(self, sample_ids: Sequence[str]) -> torch.Tensor | None:
        if not sample_ids or not shows_as_images(self.input_shape):
            return None
        return self.inputs(sample_ids)

    def shard_path(self, scratch: Path) -> Path:
        # A pool in object storage keeps its URL (`str()` of it is what workers open).
        directory = self.source.pool_dir
        return directory if isinstance(directory, ObjectURL) else Path(directory)
