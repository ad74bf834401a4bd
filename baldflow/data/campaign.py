"""A campaign's pool opened from its data parameters: in memory, or streamed from disk."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from baldflow.data.disk_source import DISK_SOURCE, open_disk_source
from baldflow.data.memory_pool import MemoryPool
from baldflow.data.pool import CampaignPool
from baldflow.data.pool_formats import cached_manifest
from baldflow.data.repeat import prepare_pool
from baldflow.data.splits import DataSourceError
from baldflow.data.streamed_pool import StreamedPool


def campaign_pool_of(data: Any, campaign: Any) -> CampaignPool:
    """`open_campaign_pool` with the arguments read from a campaign's validated sections:
    `data` (source, root, repeat, noise_std, options) and `campaign` (initial_per_class,
    seed), e.g. `config.data` and `config.campaign`. The config's types stay above this
    layer (the config imports data to validate names), so the sections are read by attribute.
    """
    return open_campaign_pool(
        data.source,
        root=data.root,
        repeat=data.repeat,
        noise_std=data.noise_std,
        options=data.options,
        initial_per_class=campaign.initial_per_class,
        seed=campaign.seed,
    )


def open_campaign_pool(
    source: str,
    *,
    root: str | Path | None,
    repeat: int,
    noise_std: float,
    options: Mapping[str, Any],
    initial_per_class: int,
    seed: int,
) -> CampaignPool:
    """The pool of a campaign with these data parameters (params.yaml's `data` section, and
    `campaign.initial_per_class` and `campaign.seed`), with its initial labeled set.

    `source` names an in-memory source (`baldflow.data.SOURCES`: loaded, repeated `repeat`
    times with `noise_std` noise, given `options`) or the disk source (`DISK_SOURCE`: the pool,
    val and test under `root`, read as written). Opening twice with the same parameters gives
    the same pool and the same initial ids.
    """
    if source == DISK_SOURCE:
        return _open_streamed(root, repeat, noise_std, options, initial_per_class, seed)
    splits, initial_ids = prepare_pool(
        source,
        repeat=repeat,
        noise_std=noise_std,
        initial_per_class=initial_per_class,
        seed=seed,
        root=root,
        **options,
    )
    return MemoryPool(splits, initial_ids)


def _open_streamed(root, repeat, noise_std, options, initial_per_class, seed) -> StreamedPool:
    """A pool larger than memory: opened, never loaded; ids are looked up on disk."""
    if root is None:
        raise DataSourceError(
            "data.source 'disk' needs data.root: a directory with pool/, val/ and test/ "
            "(python benchmarks/make_pool.py --campaign-source --out DIR builds one)"
        )
    if repeat != 1 or noise_std != 0.0 or options:
        raise DataSourceError(
            "data.source 'disk' reads the pool as written: data.repeat, data.noise_std and "
            "data.options do not apply (write the variant you want as its own pool)"
        )
    source = open_disk_source(root, initial_per_class=initial_per_class, seed=seed)
    return StreamedPool(source, cached_manifest(source.pool))
