"""A campaign's pool from its validated parameters: the adapter from `Config` to the data
layer's opener (`baldflow.data.campaign.open_campaign_pool`), which cannot import the config."""

from __future__ import annotations

from baldflow.config import Config
from baldflow.data.campaign import campaign_pool_of
from baldflow.data.pool import CampaignPool


def prepare_data(config: Config) -> CampaignPool:
    """The campaign's pool (in memory, or streamed from disk) with its initial labeled ids."""
    return campaign_pool_of(config.data, config.campaign)
