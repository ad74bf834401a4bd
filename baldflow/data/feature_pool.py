"""A frozen backbone's features as a campaign's pool: the model reads cached features, people
see the raw samples (`FeaturePool`, a `CampaignPool`)."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path

import torch

from baldflow.data.disk_source import open_disk_source
from baldflow.data.pool import CampaignPool

# Written last into a features directory: its presence says the cache is complete.
FEATURES_FILE = "features.json"


def features_complete(directory: str | Path) -> bool:
    """Whether `directory` holds a finished features cache (pool/, val/, test/ and its
    features.json, which is written last)."""
    return (Path(directory) / FEATURES_FILE).is_file()


class FeaturePool:
    """The pool of a frozen-backbone campaign.

    The model's inputs (`inputs`, `evaluation_set`, `shard_path`, `input_shape`) are the
    backbone's cached features, read by rows from the features directory; everything people
    and the ledger see (ids, labels, class names, the initial labeled set, pictures) is the raw
    pool's. `manifest` versions both: the raw pool's manifest and the features' (backbone hash,
    the key of the cache). `raw_input_shape` is the shape the whole network takes.
    """

    def __init__(self, raw: CampaignPool, directory: str | Path) -> None:
        self.raw = raw
        self.directory = Path(directory)
        self.features = open_disk_source(self.directory, initial_per_class=0, seed=0)
        self._manifest = json.loads((self.directory / FEATURES_FILE).read_text(encoding="utf-8"))
        if self.features.count != raw.pool_size:
            raise ValueError(
                f"features cache {self.directory} has {self.features.count} rows for a pool of "
                f"{raw.pool_size}"
            )

    def __repr__(self) -> str:
        return f"FeaturePool({self.raw!r}, features {str(self.directory)!r})"

    @property
    def streamed(self) -> bool:
        return self.raw.streamed

    @property
    def manifest(self) -> dict:
        return {"pool": self.raw.manifest, "features": self._manifest}

    @property
    def pool_size(self) -> int:
        return self.raw.pool_size

    @property
    def pool_ids(self) -> list[str]:
        return self.raw.pool_ids

    @property
    def initial_ids(self) -> list[str]:
        return self.raw.initial_ids

    @property
    def class_names(self) -> list[str]:
        return self.raw.class_names

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.features.input_shape)

    @property
    def raw_input_shape(self) -> tuple[int, ...]:
        return tuple(self.raw.input_shape)

    @property
    def num_classes(self) -> int:
        return self.raw.num_classes

    def unlabeled_ids(self, labeled_ids: Collection[str]) -> list[str]:
        return self.raw.unlabeled_ids(labeled_ids)

    def inputs(self, sample_ids: Sequence[str]) -> torch.Tensor:
        return self.features.pool.rows_by_ids(list(sample_ids))

    def known_labels(self, sample_ids: Sequence[str]) -> torch.Tensor:
        return self.raw.known_labels(sample_ids)

    def evaluation_set(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self.features, f"{which}_x"), getattr(self.features, f"{which}_y")

    def images(self, sample_ids: Sequence[str]) -> torch.Tensor | None:
        return self.raw.images(sample_ids)

    def shard_path(self, scratch: Path) -> Path:
        return Path(self.features.pool_dir)
