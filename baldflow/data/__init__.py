"""Data sources selectable by name (one registry of `DataSource` objects, plug-ins included),
pool repetition with noise, stable sample ids, and a campaign's pool (`CampaignPool`) held in
memory or streamed from disk."""

from baldflow.data.campaign import campaign_pool_of, open_campaign_pool
from baldflow.data.disk_source import (
    DISK_SOURCE,
    DiskSource,
    DiskSourceError,
    DiskSourceLabelError,
    DiskSourceMismatchError,
    DiskSourceNotFoundError,
    SpillError,
    open_disk_source,
    spill_pool,
)
from baldflow.data.memory_pool import MemoryPool
from baldflow.data.pool import CampaignPool
from baldflow.data.registry import (
    data_source,
    load_source,
    prepare_pool,
    source_names,
    source_streams,
)
from baldflow.data.repeat import (
    REPEAT_SEPARATOR,
    repeat_id,
    repeat_pool,
    split_repeat_id,
)
from baldflow.data.source import DataSource, SourceNotReadyError, SourceParams, check_splits
from baldflow.data.sources import DEFAULT_SOURCE, SOURCES, read_idx
from baldflow.data.splits import (
    DataNotFoundError,
    DataSourceError,
    DataSplits,
    balanced_initial_indices,
    derived_seed,
)
from baldflow.data.streamed_pool import StreamedPool

__all__ = [
    "CampaignPool",
    "DEFAULT_SOURCE",
    "REPEAT_SEPARATOR",
    "SOURCES",
    "DISK_SOURCE",
    "DataNotFoundError",
    "DataSourceError",
    "DataSource",
    "DataSplits",
    "DiskSource",
    "DiskSourceError",
    "DiskSourceLabelError",
    "DiskSourceMismatchError",
    "DiskSourceNotFoundError",
    "MemoryPool",
    "SourceNotReadyError",
    "SourceParams",
    "SpillError",
    "StreamedPool",
    "balanced_initial_indices",
    "campaign_pool_of",
    "check_splits",
    "data_source",
    "derived_seed",
    "load_source",
    "open_campaign_pool",
    "open_disk_source",
    "prepare_pool",
    "read_idx",
    "repeat_id",
    "repeat_pool",
    "spill_pool",
    "source_names",
    "source_streams",
    "split_repeat_id",
]
