"""Staging a round's inputs for shard workers (baldflow.compute.staging): local directories and
object store prefixes behind one set of calls, content-addressed keys, a worker's own bounded
copy of downloaded models, cleanup that may run twice, and `scale.staging` checked up front.
The store is the session's Swift S3 store (tests/conftest.py `swift_store`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from baldflow.compute import sharding, staging
from baldflow.config import ConfigError, validate
from baldflow.data import object_store
from baldflow.data.object_store import ObjectNotFoundError, ObjectURL
from baldflow.data.ondisk import PoolWriter
from baldflow.data.pool_formats import open_pool

BUCKET = "staging-tests"


@pytest.fixture
def s3(swift_store, monkeypatch):
    swift_store.create_bucket(BUCKET)
    for key, value in swift_store.client_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", swift_store.endpoint_url)
    return swift_store


@pytest.mark.parametrize("where", ["local", "s3"])
def test_files_arrays_and_trees_behave_alike_here_and_in_the_store(where, tmp_path, request):
    if where == "s3":
        request.getfixturevalue("s3")
        base = f"s3://{BUCKET}/alike"
    else:
        base = str(tmp_path / "alike")
    scores = np.array([0.5, np.nan, 2.0])
    staging.write_array(staging.join(base, "round", "scores", "a.npy"), scores)
    got = staging.read_array(staging.join(base, "round", "scores", "a.npy"))
    np.testing.assert_array_equal(got, scores)
    ids = "b\nü<script>\n=1+1\n"  # ids are untrusted text: kept byte for byte
    first = staging.stage_text(ids, staging.join(base, "round"), "labeled")
    assert staging.stage_text(ids, staging.join(base, "round"), "labeled") == first
    assert staging.stage_text(ids + "c\n", staging.join(base, "round"), "labeled") != first
    assert staging.read_text(first) == ids
    assert sharding.excluded_ids(first) == frozenset({"b", "ü<script>", "=1+1"})
    assert staging.subfolders(base) == ["round"]
    staging.remove_tree(staging.join(base, "round"))
    staging.remove_tree(staging.join(base, "round"))  # twice: nothing there is fine
    assert not staging.exists(staging.join(base, "round", "scores", "a.npy"))
    assert staging.subfolders(base) == []


def test_a_staged_model_is_downloaded_once_per_worker_and_old_copies_go(
    s3, tmp_path, monkeypatch, tiny_defaults
):
    from baldflow.models import build_model

    monkeypatch.setenv("BALDFLOW_STAGING_CACHE", str(tmp_path / "cache"))
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=3, seed=0)
    local = sharding.save_model_dir(model, tmp_path / "model")
    url = staging.stage_model_dir(local, f"s3://{BUCKET}/models")
    assert ObjectURL.parse(url).name.startswith("model-")
    copy = staging.local_model_dir(url)
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in local.iterdir())
    entry, loaded = sharding.cached_model(url)
    assert loaded and staging.local_model_dir(url) == copy
    _, loaded_again = sharding.cached_model(url)
    assert not loaded_again
    for seed in range(1, staging.KEPT_MODELS + 2):  # later rounds' models push the first out
        other = build_model("mlp", input_shape=(1, 8, 8), num_classes=3, seed=seed)
        staging.local_model_dir(staging.stage_model_dir(
            sharding.save_model_dir(other, tmp_path / f"model-{seed}"), f"s3://{BUCKET}/models"
        ))  # fmt: skip
    kept = [p for p in (tmp_path / "cache" / "models").iterdir() if not p.name.startswith(".")]
    assert len(kept) == staging.KEPT_MODELS and copy not in kept
    with pytest.raises(ObjectNotFoundError, match=f"bucket '{BUCKET}', key 'models/nowhere"):
        staging.read_bytes(f"s3://{BUCKET}/models/nowhere/spec.json")
    assert s3.secret_key not in str(url)


def test_a_pool_on_this_host_is_uploaded_once_under_its_content(s3, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    with PoolWriter(tmp_path / "pool", (1, 4, 4), "uint8", 50, class_names=["a", "b"]) as w:
        w.write(rng.integers(0, 255, (50, 1, 4, 4), dtype=np.uint8),
                rng.integers(0, 2, 50), [f"id-{i}" for i in range(50)])  # fmt: skip
    where = staging.stage_pool(tmp_path / "pool", f"s3://{BUCKET}/staged")
    assert "/pools/" in where
    uploads = []
    upload = object_store.upload_file
    monkeypatch.setattr(object_store, "upload_file", lambda *a: uploads.append(a) or upload(*a))
    assert staging.stage_pool(tmp_path / "pool", f"s3://{BUCKET}/staged") == where
    assert uploads == []  # found by its content: nothing uploaded again
    with open_pool(where) as remote, open_pool(tmp_path / "pool") as here:
        assert remote.ids(0, 50) == here.ids(0, 50)
        np.testing.assert_array_equal(remote.raw_rows(0, 50), here.raw_rows(0, 50))
    staging.remove_tree(f"s3://{BUCKET}/staged")


def _write_pool(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    with PoolWriter(path, (1, 4, 4), "uint8", 30, class_names=["a", "b"]) as w:
        w.write(rng.integers(0, 255, (30, 1, 4, 4), dtype=np.uint8),
                rng.integers(0, 2, 30), [f"id-{i}" for i in range(30)])  # fmt: skip
    return path


def test_pools_no_round_staged_for_days_are_pruned_and_come_back_when_needed(
    s3, tmp_path, capsys
):
    """Each staging records its use; `pool prune-staged` removes the pools unused for
    --unused-days (or with no record), keeps the rest, and a round that needs a removed or
    half-removed pool uploads it again."""
    import datetime as dt

    from baldflow.cli import main as cli_main
    from baldflow.data.ondisk import META_FILE

    base = f"s3://{BUCKET}/prune"
    fresh = staging.stage_pool(_write_pool(tmp_path / "fresh", 1), base)
    stale = staging.stage_pool(_write_pool(tmp_path / "stale", 2), base)
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    staging.write_bytes(stale + staging.LAST_USED, long_ago.isoformat().encode())
    # Staged before uses were recorded: no `last-used` at all.
    unrecorded = staging.stage_pool(_write_pool(tmp_path / "unrecorded", 3), base)
    object_store.delete(ObjectURL.parse(unrecorded + staging.LAST_USED))
    pools = {pool.location: pool for pool in staging.staged_pools(base)}
    assert set(pools) == {fresh, stale, unrecorded}
    assert pools[unrecorded].last_used is None and all(p.complete for p in pools.values())
    assert pools[fresh].bytes > 30 * 16  # the rows, ids, labels and pool.json
    # Only the pool's files under its prefix: it reads (and converts into) like any other.
    assert "last-used" not in " ".join(object_store.list_keys(ObjectURL.parse(fresh)))

    assert cli_main(["pool", "prune-staged", base, "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "3 staged pools" in listed and "would remove 2" in listed and "no record" in listed
    assert len(staging.staged_pools(base)) == 3  # a dry run removes nothing

    assert cli_main(["pool", "prune-staged", base]) == 0
    assert "removed 2" in capsys.readouterr().out
    assert [pool.location for pool in staging.staged_pools(base)] == [fresh]
    assert not staging.exists(stale + staging.LAST_USED)
    assert cli_main(["pool", "prune-staged", base]) == 0  # again: nothing more to do
    assert "removed 0" in capsys.readouterr().out

    # A round that needs the pruned pool uploads it again, whole.
    assert staging.stage_pool(tmp_path / "stale", base) == stale
    with open_pool(stale) as remote, open_pool(tmp_path / "stale") as here:
        np.testing.assert_array_equal(remote.raw_rows(0, 30), here.raw_rows(0, 30))
    # So does one that finds a pool a prune removed only in part (pool.json left behind).
    for key in object_store.list_keys(ObjectURL.parse(fresh)):
        if key != META_FILE:
            object_store.delete(ObjectURL.parse(staging.join(fresh, key)))
    assert staging.stage_pool(tmp_path / "fresh", base) == fresh
    with open_pool(fresh) as remote:
        assert remote.ids(0, 3) == ["id-0", "id-1", "id-2"]

    # A pool read in place (an .npz) is converted into its prefix, the record beside it.
    npz = tmp_path / "pool.npz"
    with open_pool(tmp_path / "stale") as here:
        np.savez(npz, x=here.raw_rows(0, 30), y=here.labels(0, 30).numpy(),
                 ids=np.array(here.ids(0, 30)), class_names=np.array(["a", "b"]))  # fmt: skip
    converted = staging.stage_pool(npz, base)
    assert staging.stage_pool(npz, base) == converted
    with open_pool(converted) as remote:
        assert remote.ids(0, 30) == [f"id-{i}" for i in range(30)]

    # Bad requests: a local directory holds no staged pools; days cannot be negative.
    assert cli_main(["pool", "prune-staged", str(tmp_path), "--unused-days", "1"]) == 2
    assert "is not an s3://bucket/prefix URL" in capsys.readouterr().err
    assert cli_main(["pool", "prune-staged", base, "--unused-days", "-1"]) == 2
    assert "--unused-days must be >= 0" in capsys.readouterr().err
    staging.remove_tree(base)


def test_listings_page_through_every_key(s3, monkeypatch):
    """S3 answers at most 1,000 keys to one LIST: listings follow its continuation tokens, so
    the staging area's pools past the first page are seen (pages of 3 here)."""
    monkeypatch.setattr(object_store, "LIST_PAGE", 3)
    base = f"s3://{BUCKET}/pages"
    names = [f"pools/p{i}/x.npy" for i in range(4)] + [f"pools/p{i}.last-used" for i in range(4)]
    for name in names:
        staging.write_bytes(staging.join(base, name), b"1")
    assert object_store.list_keys(ObjectURL.parse(base), limit=None) == sorted(names)
    assert object_store.list_keys(ObjectURL.parse(base), limit=5) == sorted(names)[:5]
    assert staging.subfolders(staging.join(base, "pools")) == [f"p{i}" for i in range(4)]
    assert len(staging.staged_pools(base)) == 4
    staging.remove_tree(base)
    assert object_store.list_keys(ObjectURL.parse(base), limit=None) == []


def test_scale_staging_is_checked_when_the_parameters_are_read(tiny_defaults):
    params = {**tiny_defaults, "scale": {"staging": "/shared/scratch"}}
    with pytest.raises(ConfigError, match="scale.staging must be an s3://bucket/prefix URL"):
        validate(params)
    params["scale"] = {"staging": "s3://bucket/prefix/"}
    assert validate(params).scale.staging == "s3://bucket/prefix"
    params["model"] = {**tiny_defaults.get("model", {}), "freeze": "backbone", "weights": "w.pt"}
    with pytest.raises(ConfigError, match="scale.staging with model.freeze backbone"):
        validate(params)


def test_a_store_outage_mid_round_fails_the_round_cleanly_and_the_next_run_completes_it(
    s3, tmp_path, tiny_params, prefect_harness
):
    """The store goes down once the round's inputs are staged: the shards' reads and writes
    are retried with backoff, then the round fails with one line naming the store, nothing
    of it is committed, and the next run (the store back) acquires what an undisturbed run
    acquires."""
    import csv
    import os
    import subprocess
    import sys
    import time

    import yaml
    from helpers import run_flow, write_disk_source

    from baldflow.data.convert import convert_pool
    from baldflow.faults import FAULT_ENV, FAULT_FILE_ENV
    from baldflow.workspace import Workspace

    write_disk_source(tmp_path / "source", tiny_params)
    for part in ("pool", "val", "test"):
        convert_pool(tmp_path / "source" / part, f"s3://{BUCKET}/outage/{part}").close()
    params = {**tiny_params, "campaign": {**tiny_params["campaign"], "rounds": 1}}
    params["data"] = {"source": "disk", "root": str(tmp_path / "source")}
    run_flow(tmp_path / "undisturbed", params)
    params["data"]["root"] = f"s3://{BUCKET}/outage"
    params["scale"] = {"staging": f"s3://{BUCKET}/outage-staging"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    marker = tmp_path / "paused"
    env = {k: v for k, v in os.environ.items() if k not in (FAULT_ENV, FAULT_FILE_ENV)}
    env.update(PREFECT_API_URL=prefect_harness, BALDFLOW_S3_RETRIES="3")
    argv = [sys.executable, "-m", "baldflow.cli", "run", "--workspace", str(tmp_path / "ws"),
            "--config", str(tmp_path / "params.yaml")]  # fmt: skip
    paused = {**env, FAULT_ENV: "stage-scoring:after:1:pause", FAULT_FILE_ENV: str(marker)}
    proc = subprocess.Popen(argv, env=paused, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the pause point was never reached"
            time.sleep(0.1)
        s3.stop()
        try:
            Path(f"{marker}.release").touch()
            out, _ = proc.communicate(timeout=240)
        finally:
            s3.start()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 5, out  # what the campaign needs is missing: the store
    last = out.strip().splitlines()[-1]
    assert last.startswith("ObjectStoreUnreachableError: reading s3://"), out
    assert "the object store did not answer after 3 attempts" in last, out
    assert f"bucket '{BUCKET}'" in out and s3.secret_key not in out
    assert Workspace(tmp_path / "ws").completed_rounds("tiny") == [0]

    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

    def decided(workspace: Path) -> list[tuple]:
        with open(workspace / "data" / "tiny" / "ledger.csv", newline="") as f:
            return [(r["round"], r["sample_id"], r["score"]) for r in csv.DictReader(f)]

    assert decided(tmp_path / "ws") == decided(tmp_path / "undisturbed")
    assert not object_store.list_keys(ObjectURL.parse(f"s3://{BUCKET}/outage-staging/scoring"))


def test_preflight_refuses_a_staging_prefix_it_cannot_write_and_leaves_no_probe(s3, tiny_defaults):
    from baldflow.preflight import PreflightError, check_staging

    params = {**tiny_defaults, "scale": {"runner": "dask", "staging": f"s3://{BUCKET}/probe"}}
    check_staging(validate(params))
    assert object_store.list_keys(ObjectURL(BUCKET, "probe")) == []
    params["scale"]["staging"] = "s3://no-such-bucket/probe"
    with pytest.raises(PreflightError, match="scale.staging s3://no-such-bucket/probe cannot be"):
        check_staging(validate(params))
    # Unused where the pool is scored in this process: nothing is asked of the store.
    params["scale"] = {"runner": "local", "staging": "s3://no-such-bucket/probe"}
    check_staging(validate(params))
