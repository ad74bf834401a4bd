"""A campaign's pool, prepared from its data parameters: in memory or read from disk."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from baldflow.config import Config


@dataclasses.dataclass
class CampaignData:
    """A prepared pool: in memory (`splits`, with a lookup from sample id to row), or on disk
    (`disk`, a `data.disk_source.DiskSource` whose pool is read by rows and never loaded)."""

    splits: Any  # baldflow.data.DataSplits, or None for a pool on disk
    initial_ids: list[str]
    row_of: dict[str, int]
    disk: Any = None  # baldflow.data.disk_source.DiskSource
    # A pool on disk: `data.ondisk.manifest` of it, versioned with every round.
    pool_manifest: dict | None = None

    @property
    def on_disk(self) -> bool:
        return self.disk is not None

    @property
    def pool_size(self) -> int:
        return self.disk.count if self.on_disk else len(self.splits.pool_ids)

    @property
    def pool_ids(self) -> list[str]:
        if self.on_disk:
            return self.disk.pool.ids(0, self.disk.count)
        return list(self.splits.pool_ids)

    @property
    def class_names(self) -> list[str]:
        return list(self.disk.class_names if self.on_disk else self.splits.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.disk.input_shape if self.on_disk else self.splits.input_shape)

    @property
    def num_classes(self) -> int:
        return self.disk.num_classes if self.on_disk else self.splits.num_classes

    def evaluation_set(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of the `val` or `test` split."""
        source = self.disk if self.on_disk else self.splits
        return getattr(source, f"{which}_x"), getattr(source, f"{which}_y")

    def rows(self, sample_ids: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self.row_of[sid] for sid in sample_ids], dtype=torch.long)

    def inputs(self, sample_ids: Sequence[str]) -> torch.Tensor:
        """The model inputs of these pool samples, in this order (read by id on disk)."""
        if self.on_disk:
            return self.disk.pool.rows_by_ids(list(sample_ids))
        return self.splits.pool_x[self.rows(sample_ids)]

    def images(self, pending: Any) -> torch.Tensor | None:
        """The pool images of a handed-off batch, for its contact sheet (None unless images)."""
        from baldflow.figures.thumbnails import is_image_batch

        if not pending.sample_ids:
            return None
        images = self.inputs(pending.sample_ids)
        return images if is_image_batch(images) else None

    def unlabeled_rows(self, labeled_ids: set[str]) -> torch.Tensor:
        keep = [i for i, sid in enumerate(self.splits.pool_ids) if sid not in labeled_ids]
        return torch.tensor(keep, dtype=torch.long)


def prepare_data(config: Config) -> CampaignData:
    from baldflow.data.disk_source import DISK_SOURCE

    if config.data.source == DISK_SOURCE:
        return _prepare_disk_data(config)
    from baldflow.data import prepare_pool

    splits, initial_ids = prepare_pool(
        config.data.source,
        repeat=config.data.repeat,
        noise_std=config.data.noise_std,
        initial_per_class=config.campaign.initial_per_class,
        seed=config.campaign.seed,
        root=config.data.root,
        **config.data.options,
    )
    row_of = {sid: i for i, sid in enumerate(splits.pool_ids)}
    if len(row_of) != len(splits.pool_ids):
        raise ValueError(f"data.source {config.data.source!r} gave duplicate sample ids")
    return CampaignData(splits, list(initial_ids), row_of)


def _prepare_disk_data(config: Config) -> CampaignData:
    """A pool larger than memory: opened, never loaded; ids are looked up on disk."""
    from baldflow.data.disk_source import open_disk_source
    from baldflow.data.splits import DataSourceError

    d = config.data
    if d.root is None:
        raise DataSourceError(
            "data.source 'disk' needs data.root: a directory with pool/, val/ and test/ "
            "(python benchmarks/make_pool.py --campaign-source --out DIR builds one)"
        )
    if d.repeat != 1 or d.noise_std != 0.0 or d.options:
        raise DataSourceError(
            "data.source 'disk' reads the pool as written: data.repeat, data.noise_std and "
            "data.options do not apply (write the variant you want as its own pool)"
        )
    source = open_disk_source(
        d.root, initial_per_class=config.campaign.initial_per_class, seed=config.campaign.seed
    )
    from baldflow.data.ondisk import cached_manifest

    return CampaignData(
        None, list(source.initial_ids), {}, disk=source, pool_manifest=cached_manifest(source.pool)
    )
