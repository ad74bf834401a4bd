"""What several test modules share: running the campaign flow in this process, copying a
finished workspace instead of running its campaign again, and random MC-dropout log probs."""

from __future__ import annotations

import contextlib
import copy
import shutil
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch


def run_flow(
    workspace: str | Path,
    params: Mapping[str, Any],
    *,
    campaign: str | None = None,
    rounds: int | None = None,
    env: Mapping[str, str | None] | None = None,
) -> dict:
    """The campaign flow in this process (the session's Prefect server when the test uses
    `prefect_harness`). `rounds` overrides campaign.rounds on a copy of params; `env` sets (or,
    with None, unsets) environment variables for this call only."""
    from baldflow.flows.campaign import campaign_flow

    if rounds is not None:
        params = copy.deepcopy(dict(params))
        params["campaign"]["rounds"] = rounds
    with pytest.MonkeyPatch.context() as patch:
        for key, value in (env or {}).items():
            if value is None:
                patch.delenv(key, raising=False)
            else:
                patch.setenv(key, value)
        return campaign_flow(workspace=str(workspace), params=params, campaign=campaign)


def copy_workspace(source: str | Path, target: str | Path) -> Path:
    """A copy of a finished workspace (git, DVC cache and local remote, MLflow store) that owns
    its MLflow artifacts: the store records absolute artifact locations, which would otherwise
    still point into `source`. Copying a campaign is far cheaper than running it again."""
    source, target = Path(source).resolve(), Path(target).resolve()
    shutil.copytree(source, target, symlinks=True)
    store = target / "mlflow" / "mlflow.db"
    if store.exists():
        _repoint_store(store, str(source), str(target))
    # A logged model's MLmodel file names its own location too.
    for mlmodel in (target / "mlflow").glob("artifacts/**/MLmodel"):
        text = mlmodel.read_text()
        if str(source) in text:
            mlmodel.write_text(text.replace(str(source), str(target)))
    return target


# Columns of MLflow's SQLite store that hold an artifact location (absolute, as a path or a
# file: URI); the schema of the installed MLflow decides which of them exist.
_LOCATION_COLUMNS = {
    "experiments": ("artifact_location",),
    "runs": ("artifact_uri",),
    "model_versions": ("source", "storage_location"),
    "logged_models": ("artifact_location",),
}


def _repoint_store(store: Path, old: str, new: str) -> None:
    with contextlib.closing(sqlite3.connect(store)) as db, db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table, columns in _LOCATION_COLUMNS.items():
            if table not in tables:
                continue
            present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            for column in set(columns) & present:
                db.execute(
                    f"UPDATE {table} SET {column} = replace({column}, ?, ?)"
                    f" WHERE instr({column}, ?) > 0",
                    (old, new, old),
                )


def random_log_probs(
    N: int = 64,
    K: int = 7,
    C: int = 5,
    seed: int = 0,
    *,
    scale: float = 3.0,
    sharpness: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Seeded log probs [N, K, C] of K posterior samples, computed in float64, then cast.

    Without `sharpness`, every sample's logits are independent normals times `scale`. With it,
    the samples of a point share logits (normals times `sharpness`) and differ by per-sample
    noise of a per-point spread in [0, 2): samples that agree more or less, as a trained
    model's do.
    """
    generator = torch.Generator().manual_seed(seed)
    if sharpness is None:
        logits = torch.randn(N, K, C, generator=generator, dtype=torch.float64) * scale
    else:
        shared = torch.randn(N, 1, C, generator=generator, dtype=torch.float64) * sharpness
        per_sample = torch.randn(N, K, C, generator=generator, dtype=torch.float64)
        spread = torch.rand(N, 1, 1, generator=generator, dtype=torch.float64) * 2
        logits = shared + per_sample * spread
    return torch.log_softmax(logits, -1).to(dtype)


def trained_round_one(params: Mapping[str, Any], root: Path, also_labeled: tuple[int, ...] = ()):
    """Round 1 of a campaign computed in process, and what its sharded path reads from disk.

    Trains round 1's model on the initial labeled set (plus the pool rows `also_labeled`, as if
    labeled too), spills the pool and the model under `root` and writes the labeled ids there.
    Returns (config, data, trained, labeled_ids, seed).
    """
    from baldflow import seeds
    from baldflow.compute import campaign_data, fitting, sharding
    from baldflow.config import validate
    from baldflow.data.disk_source import spill_pool

    config = validate(params)
    data = campaign_data.prepare_data(config)
    labeled = [(sid, int(data.splits.pool_y[data.row_of[sid]])) for sid in data.initial_ids]
    seed = seeds.round_seed(config.campaign.seed, 1)
    trained = fitting.train(config, data, labeled, seed)
    splits = data.splits
    spill_pool(
        splits.pool_x, splits.pool_y, list(splits.pool_ids), splits.class_names, root / "pool"
    )
    sharding.save_model_dir(trained.model, root / "model")
    labeled_ids = {sid for sid, _ in labeled} | {splits.pool_ids[row] for row in also_labeled}
    sharding.write_exclude_file(labeled_ids, root / "labeled.txt")
    return config, data, trained, labeled_ids, seed


def write_disk_source(root: Path, params: dict) -> None:
    """The tiny digits campaign's data as a disk source: pool/, val/ and test/ DiskPools."""
    from baldflow.compute import campaign_data
    from baldflow.config import validate
    from baldflow.data.ondisk import PoolWriter

    splits = campaign_data.prepare_data(validate(params)).splits
    parts = {
        "pool": (splits.pool_x, splits.pool_y, list(splits.pool_ids)),
        "val": (splits.val_x, splits.val_y, [f"val-{i}" for i in range(len(splits.val_y))]),
        "test": (splits.test_x, splits.test_y, [f"test-{i}" for i in range(len(splits.test_y))]),
    }
    for name, (x, y, ids) in parts.items():
        with PoolWriter(
            root / name, tuple(x.shape[1:]), "float32", len(ids),
            class_names=[str(c) for c in splits.class_names],
        ) as writer:  # fmt: skip
            writer.write(x.numpy(), y.numpy(), ids)
