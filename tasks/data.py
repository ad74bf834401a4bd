"""Task: load the data source and build the pool with its initial labeled ids."""

from __future__ import annotations

from baldflow.compute import campaign_data
from baldflow.config import Config
from baldflow.data.pool import CampaignPool
from baldflow.tasks.base import LOCAL_FILES, baldflow_task


@baldflow_task("prepare-data", retry=LOCAL_FILES)
def prepare_data(config: Config) -> CampaignPool:
    return campaign_data.prepare_data(config)
