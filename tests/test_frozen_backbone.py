"""A frozen backbone (model.freeze: backbone): its features are computed once per pool and
backbone, in shards aligned to fixed chunks, cached where other campaigns find them, and a
campaign on a pool on disk scored on Dask acquires exactly what the local runner acquires."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_flow, write_disk_source

from baldflow.compute import campaign_data, features
from baldflow.config import validate
from baldflow.data.feature_pool import FEATURES_FILE, FeaturePool


def frozen(params: dict, **model) -> dict:
    params = copy.deepcopy(params)
    params["model"] = {**params["model"], "name": "cnn", "freeze": "backbone", **model}
    return params


def test_shard_ranges_start_on_chunk_boundaries():
    for count, shards in ((1, 3), (255, 2), (1000, 3), (5000, 7), (256 * 4, 4)):
        ranges = features.shard_ranges(count, shards)
        assert ranges[0][0] == 0 and ranges[-1][1] == count
        assert all(a % features.EMBED_CHUNK == 0 for a, _ in ranges)
        assert all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:], strict=False))
        assert len(ranges) <= shards


def test_features_do_not_depend_on_the_shards(tmp_path, tiny_params):
    config = validate(frozen(tiny_params))
    data = campaign_data.prepare_data(config)
    raw_dir = data.shard_path(tmp_path / "raw")
    job = features.plan_features(config, data, raw_dir, tmp_path / "features")
    assert not job.done and job.feature_shape == (64, 2, 2)
    whole = features.embed_shard(job, 0, job.count)
    one = np.load(whole)
    Path(whole).unlink()
    ranges = features.shard_ranges(job.count, 3)
    assert len(ranges) == 2  # 300 rows: two chunks of 256
    parts = np.concatenate([np.load(features.embed_shard(job, a, b)) for a, b in ranges])
    assert np.array_equal(one, parts)

    features.finish_features(job, data, ranges)
    pool = FeaturePool(data, job.directory)
    ids = data.pool_ids[:5]
    assert torch.equal(pool.inputs(ids), torch.from_numpy(one[:5]))
    assert pool.initial_ids == data.initial_ids and pool.raw_input_shape == (1, 8, 8)
    assert pool.manifest["features"]["backbone_hash"] == job.backbone_hash
    again = features.plan_features(config, data, raw_dir, tmp_path / "features")
    assert again.done and again.key == job.key


def test_a_changed_weights_file_makes_a_new_cache(tmp_path, tiny_params):
    from baldflow.models import build_model

    weights = tmp_path / "backbone.pt"
    model = build_model("cnn", (1, 8, 8), 10, seed=5)
    torch.save(model.state_dict(), weights)
    config = validate(frozen(tiny_params, weights=str(weights)))
    data = campaign_data.prepare_data(config)
    raw_dir = data.shard_path(tmp_path / "raw")
    first = features.plan_features(config, data, raw_dir, tmp_path / "features")
    state = model.state_dict()
    state["prefix.0.weight"] = state["prefix.0.weight"] + 0.01
    torch.save(state, weights)
    second = features.plan_features(config, data, raw_dir, tmp_path / "features")
    assert first.key != second.key and first.backbone_hash != second.backbone_hash


def _decided(workspace: Path, campaign: str) -> list[tuple]:
    import csv

    keys = ("round", "sample_id", "label", "score", "selection_key")
    with open(workspace / "data" / campaign / "ledger.csv", newline="") as f:
        return [tuple(row[k] for k in keys) for row in csv.DictReader(f)]


def test_a_frozen_campaign_on_disk_acquires_the_same_on_dask(
    tmp_path, tiny_params, prefect_harness, monkeypatch
):
    pytest.importorskip("prefect_dask")
    # Dask workers are other processes: they find the session's server through the environment.
    monkeypatch.setenv("PREFECT_API_URL", prefect_harness)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    write_disk_source(tmp_path / "source", tiny_params)
    params = frozen(tiny_params)
    params["campaign"]["rounds"] = 2
    params["data"] = {"source": "disk", "root": str(tmp_path / "source")}
    run_flow(tmp_path / "one", params)
    dask = copy.deepcopy(params)
    dask["scale"] = {"runner": "dask", "workers": 2, "shards": 3}
    result = run_flow(tmp_path / "dask", dask)
    assert result["stopped"] == "rounds"
    one, on_dask = _decided(tmp_path / "one", "tiny"), _decided(tmp_path / "dask", "tiny")
    assert len(one) == 10 + 2 * 5 and on_dask == one

    # Each workspace computed its cache once; the round's commit versions its manifest.
    caches = list((tmp_path / "dask" / ".git" / "baldflow" / "features").iterdir())
    assert len(caches) == 1 and (caches[0] / FEATURES_FILE).is_file()
    manifest = json.loads((tmp_path / "dask" / "data" / "tiny" / "pool-manifest.json").read_text())
    assert manifest["features"]["key"] == caches[0].name
    assert manifest["pool"]["count"] == 300

    # Another campaign on the same pool and backbone reuses the cache (its files untouched).
    stamp = os.stat(caches[0] / "pool" / "x.npy").st_mtime_ns
    other = copy.deepcopy(params)
    other["campaign"]["name"] = "other"
    other["campaign"]["rounds"] = 1
    run_flow(tmp_path / "dask", other)
    assert os.stat(caches[0] / "pool" / "x.npy").st_mtime_ns == stamp
    assert len(list(caches[0].parent.iterdir())) == 1


def test_a_round_model_of_a_frozen_campaign_rebuilds_from_its_spec(tmp_path, tiny_params):
    """What a round saves (the head's spec and weights) is what workers and the registry
    rebuild: the same log-probs on the same features."""
    from baldflow.compute.fitting import campaign_model
    from baldflow.models import rebuild_model
    from baldflow.models.weights import SPEC_FILE, WEIGHTS_FILE, save_model_files

    config = validate(frozen(tiny_params))
    head = campaign_model(config, (1, 8, 8), 10, seed=11, part="head")
    assert isinstance(head.prefix, torch.nn.Identity) and head.spec["part"] == "head"
    save_model_files(tmp_path / "model", head.state_dict(), head.spec)
    again = rebuild_model(tmp_path / "model" / SPEC_FILE, tmp_path / "model" / WEIGHTS_FILE)
    features_B_F = torch.randn(4, 64, 2, 2, generator=torch.Generator().manual_seed(0))
    for model in (head.eval(), again):
        model.resample_masks(3, torch.Generator().manual_seed(1))
    assert torch.equal(head(features_B_F, 3), again(features_B_F, 3))
