"""Task: load the data source and build the pool with its initial labeled ids."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from baldflow.compute import campaign_data
from baldflow.config import Config


@task(name="prepare-data", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def prepare_data(config: Config) -> campaign_data.CampaignData:
    return campaign_data.prepare_data(config)
