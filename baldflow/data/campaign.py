"""A campaign's pool opened from its data parameters, through the source the registry names:
in memory, or streamed from disk."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from baldflow.data.pool import CampaignPool
from baldflow.data.registry import data_source
from baldflow.data.source import DataSource, SourceParams, check_pool


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

    `source` is a name the source registry resolves (`baldflow.data.registry.data_source`): an
    in-memory source (loaded, repeated `repeat` times with `noise_std` noise, given `options`),
    the disk source (`DISK_SOURCE`: the pool, val and test under `root`, read as written), or a
    plug-in. Opening twice with the same parameters gives the same pool and initial ids.
    """
    opened = data_source(source)
    params = SourceParams(
        root=root,
        repeat=repeat,
        noise_std=noise_std,
        options=dict(options),
        initial_per_class=initial_per_class,
        seed=seed,
    )
    pool = opened.open(params)
    # The default open checks a plug-in's splits itself; a plug-in's own open is checked here.
    if not opened.checked_by_loader and type(opened).open is not DataSource.open:
        check_pool(opened.name, pool)
    return pool
