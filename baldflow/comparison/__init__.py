"""Strategy comparison: benchmark campaigns per strategy and seed, their curves and the report.

`python -m baldflow.comparison run-one|report` is what the stages of dvc.yaml call.
"""

from baldflow.comparison.config import (
    BenchmarkConfig,
    campaign_name,
    campaign_params,
    load_benchmark,
    validate_benchmark,
)
from baldflow.comparison.curves import (
    Curve,
    area_under_curve,
    labels_to_target,
    summarize_campaign,
)

__all__ = [
    "BenchmarkConfig",
    "Curve",
    "area_under_curve",
    "campaign_name",
    "campaign_params",
    "labels_to_target",
    "load_benchmark",
    "summarize_campaign",
    "validate_benchmark",
]
