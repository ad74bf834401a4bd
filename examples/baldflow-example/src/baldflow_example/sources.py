"""The data-source plug-in: scikit-learn's breast cancer table (569 rows, 30 features, shipped
with scikit-learn: nothing is downloaded), split by the campaign's seed."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from baldflow.data import DataSource, DataSplits
from baldflow.data.source import SourceNotReadyError
from baldflow.data.splits import DataSourceError, derived_generator, resolve_size

ID_PREFIX = "bc-"
# Features a hand-off sheet shows of a sample: enough for a person to recognise the row.
DESCRIBED_FEATURES = 4


@functools.lru_cache(maxsize=1)
def _table() -> Any:
    """The dataset as scikit-learn ships it (read once per process: describe_item is called
    for every row of a hand-off sheet)."""
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer()


def sample_id(row: int) -> str:
    return f"{ID_PREFIX}{row:04d}"


def row_of(sample: str) -> int:
    """The table row of an id made by `sample_id`; DataSourceError for any other text."""
    digits = sample.removeprefix(ID_PREFIX)
    if sample == digits or not digits.isdigit():
        raise DataSourceError(f"{sample!r} is not a breast cancer sample id ({ID_PREFIX}NNNN)")
    return int(digits)


class BreastCancer(DataSource):
    """Breast cancer diagnosis (malignant or benign) from 30 measurements of a cell nucleus
    image; every row is one sample, its id `bc-NNNN` its row in scikit-learn's table."""

    def load(
        self, root: str | None, *, seed: int, val_size: int = 60, test_size: int = 150
    ) -> DataSplits:
        """Pool, validation and test rows drawn by `seed` alone (a resumed campaign sees the
        same pool), standardised with the pool's mean and standard deviation: the pool is
        what is trained on, so val and test statistics must not leak into the inputs."""
        table = _table()
        x_N_D = torch.as_tensor(table.data, dtype=torch.float32)
        y_N = torch.as_tensor(table.target, dtype=torch.long)
        n = x_N_D.shape[0]
        n_test = resolve_size("data.options.test_size", test_size, n)
        n_val = resolve_size("data.options.val_size", val_size, n)
        if n_test + n_val >= n:
            raise DataSourceError(
                f"data.options.val_size + test_size = {n_val + n_test} leaves no pool of the "
                f"{n} rows"
            )
        # A stream of its own: other uses of the campaign seed (the initial labels) stay
        # independent of the split.
        order = torch.randperm(n, generator=derived_generator(seed, "example-breast-cancer"))
        test_rows = order[:n_test].sort().values
        val_rows = order[n_test : n_test + n_val].sort().values
        pool_rows = order[n_test + n_val :].sort().values
        mean_D = x_N_D[pool_rows].mean(0)
        # A constant feature would divide by 0; left unscaled instead.
        std_D = x_N_D[pool_rows].std(0)
        std_D = torch.where(std_D > 0, std_D, torch.ones_like(std_D))

        def scaled(rows: torch.Tensor) -> torch.Tensor:
            return ((x_N_D[rows] - mean_D) / std_D).contiguous()

        return DataSplits(
            pool_x=scaled(pool_rows),
            pool_y=y_N[pool_rows],
            pool_ids=[sample_id(row) for row in pool_rows.tolist()],
            val_x=scaled(val_rows),
            val_y=y_N[val_rows],
            test_x=scaled(test_rows),
            test_y=y_N[test_rows],
            class_names=[str(name) for name in table.target_names],
            info={"source": "sklearn breast cancer", "rows": n, "standardised_on": "pool"},
        )

    def preflight(self, root: Path | None, options: Mapping[str, Any]) -> None:
        """Before any server starts: the table comes with scikit-learn, so that is all there
        is to check."""
        try:
            import sklearn.datasets  # noqa: F401
        except ImportError as error:
            raise SourceNotReadyError(
                f"data source {self.name!r} reads scikit-learn's breast cancer table, but "
                f"scikit-learn does not import ({error}); pip install scikit-learn"
            ) from error

    def describe_item(self, root: str | None, sample_id: str) -> str:
        """The id, its row and the first measurements by name, as the hand-off sheet shows
        them to the person who labels the sample (raw values, not standardised ones)."""
        table = _table()
        row = row_of(sample_id)
        values = table.data[row]
        shown = ", ".join(
            f"{name} {values[i]:.4g}"
            for i, name in enumerate(table.feature_names[:DESCRIBED_FEATURES])
        )
        return f"breast cancer sample {sample_id} (row {row}): {shown}, ..."
