"""Pools in object storage (baldflow.data.object_store, baldflow.data.object_pools), on a real
S3 endpoint: the session's OpenStack Swift store (tests/conftest.py `swift_store`, shared with
test_s3.py). Rows are read by byte ranges through the block cache and equal the local copy."""

from __future__ import annotations

import copy
import csv
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_flow, write_disk_source

from baldflow.cli import main as cli_main
from baldflow.common import file_sha256
from baldflow.config import ConfigError, validate
from baldflow.data import object_store
from baldflow.data.convert import convert_pool
from baldflow.data.object_pools import ObjectDiskPool, ObjectNpzPool
from baldflow.data.object_store import (
    ObjectAccessError,
    ObjectNotFoundError,
    ObjectStoreUnreachableError,
    ObjectURL,
)
from baldflow.data.ondisk import PoolExistsError, PoolWriter
from baldflow.data.pool_formats import manifest, open_pool
from baldflow.preflight import PreflightError, check, check_data
from baldflow.stack.process import free_port

BUCKET = "pools"
CLASSES = ["a", "b", "c"]


@pytest.fixture
def s3(swift_store, monkeypatch):
    """The store's endpoint and credentials in this test's environment only (never in params),
    and a small block cache (64 KiB blocks, 2 MiB) so a few rows are a small part of a pool."""
    swift_store.create_bucket(BUCKET)
    for key, value in swift_store.client_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", swift_store.endpoint_url)
    before = object_store.block_cache()
    cache = object_store.configure_cache(capacity_bytes=2 << 20, block_bytes=64 << 10)
    yield swift_store
    object_store.configure_cache(before.capacity_bytes, before.block_bytes)
    assert cache is not object_store.block_cache()


def _local_pool(directory: Path, n: int = 6000):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)
    y = rng.integers(-1, len(CLASSES), size=n)
    ids = [f"img-{i:05d}" for i in range(n)]
    with PoolWriter(directory, (1, 28, 28), "uint8", n, class_names=CLASSES) as writer:
        writer.write(x, y, ids)
    return x, y, ids


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_pools_in_swift_read_by_row_ranges_equal_the_local_copy(s3, tmp_path, monkeypatch):
    x, y, ids = _local_pool(tmp_path / "pool")
    local = open_pool(tmp_path / "pool")
    url = "s3://pools/rows/pool"
    remote = convert_pool(local, url)
    assert isinstance(remote, ObjectDiskPool) and str(remote.directory) == url
    size = sum((tmp_path / "pool" / name).stat().st_size for name in ("x.npy", "y.npy"))

    cache = object_store.block_cache()
    cache.clear()
    cache.reset_counters()
    pool = open_pool(url)
    assert (pool.count, pool.sample_shape, pool.class_names) == (6000, (1, 28, 28), CLASSES)
    assert np.array_equal(pool.raw_rows(4000, 4005), x[4000:4005])
    assert torch.equal(pool.labels(4000, 4005), torch.from_numpy(y[4000:4005]))
    fetched = cache.stats()["bytes_fetched"]
    assert 0 < fetched < 0.05 * size, (fetched, size)  # a few rows: a few blocks, not the pool
    # Re-reading hits the cache: no new request, no new byte.
    requests = cache.stats()["requests"]
    assert torch.equal(pool.rows(4001, 4003), local.rows(4001, 4003))
    stats = cache.stats()
    assert stats["requests"] == requests and stats["bytes_fetched"] == fetched
    assert stats["hits"] >= 1

    # Every reader: ranges, ids, lookups by id, a pickled copy (a Dask worker's).
    for start, stop in ((0, 1), (63, 1000), (5990, 6000)):
        assert torch.equal(pool.rows(start, stop), local.rows(start, stop))
        assert pool.ids(start, stop) == ids[start:stop]
    wanted = [ids[17], ids[5999], ids[3]]
    assert torch.equal(pool.rows_by_ids(wanted), local.rows_by_ids(wanted))
    assert torch.equal(pool.labels_by_ids(wanted), local.labels_by_ids(wanted))
    again = pickle.loads(pickle.dumps(pool))
    assert isinstance(again, ObjectDiskPool) and again.ids(9, 10) == [ids[9]]
    assert cache.stats()["bytes_fetched"] < 0.5 * size  # still never the whole pool

    # The manifest comes from the store: single-part uploads' ETags are the files' MD5s.
    files = manifest(pool)["files"]
    assert files["x.npy"] == {"bytes": (tmp_path / "pool" / "x.npy").stat().st_size,
                              "md5": _md5(tmp_path / "pool" / "x.npy")}  # fmt: skip

    # An uncompressed .npz object, uploaded in parts: its ETag is no MD5, so it is streamed
    # once for its sha256.
    npz = tmp_path / "pool.npz"
    np.savez(npz, x=x, y=y, ids=np.array(ids), class_names=np.array(CLASSES))
    monkeypatch.setattr(object_store, "SINGLE_PUT_BYTES", 1 << 20)
    object_store.upload_file(npz, ObjectURL(BUCKET, "rows/pool.npz"))
    remote_npz = open_pool("s3://pools/rows/pool.npz")
    assert isinstance(remote_npz, ObjectNpzPool)
    assert remote_npz.class_names == CLASSES and remote_npz.ids(100, 103) == ids[100:103]
    assert torch.equal(remote_npz.rows(2000, 2100), local.rows(2000, 2100))
    assert torch.equal(remote_npz.labels(0, 6000), local.labels(0, 6000))
    entry = manifest(remote_npz)["files"]["pool.npz"]
    assert entry == {"bytes": npz.stat().st_size, "sha256": file_sha256(npz)}


def test_pool_info_and_convert_take_urls(s3, tmp_path, capsys):
    _local_pool(tmp_path / "pool", n=300)
    assert cli_main(["pool", "convert", str(tmp_path / "pool"), "s3://pools/cli/pool"]) == 0
    assert "300 / 300 rows" in capsys.readouterr().out
    assert cli_main(["pool", "info", "s3://pools/cli/pool", "--manifest"]) == 0
    shown = capsys.readouterr().out
    assert "ObjectDiskPool, 300 rows of [1, 28, 28] uint8" in shown
    assert "content sha256: " in shown and "read from the object store: " in shown
    # Never over a complete pool; from the bucket back to a local directory.
    assert cli_main(["pool", "convert", str(tmp_path / "pool"), "s3://pools/cli/pool"]) == 1
    assert "PoolExistsError" in capsys.readouterr().err
    with pytest.raises(PoolExistsError, match="complete pool"):
        convert_pool(tmp_path / "pool", "s3://pools/cli/pool")
    assert cli_main(["pool", "convert", "s3://pools/cli/pool", str(tmp_path / "back")]) == 0
    capsys.readouterr()
    back, local = open_pool(tmp_path / "back"), open_pool(tmp_path / "pool")
    assert torch.equal(back.rows(0, 300), local.rows(0, 300))
    assert back.ids(0, 300) == local.ids(0, 300)


def test_errors_name_the_bucket_and_key_never_the_secret(s3, tmp_path, monkeypatch, capsys):
    secret = s3.secret_key
    with pytest.raises(ObjectNotFoundError) as missing:
        open_pool("s3://pools/nowhere/pool.npz")
    text = str(missing.value)
    assert "bucket 'pools'" in text and "key 'nowhere/pool.npz'" in text and secret not in text
    assert cli_main(["pool", "info", "s3://pools/nowhere/pool"]) == 1
    err = capsys.readouterr().err
    assert "key 'nowhere/pool/pool.json'" in err and secret not in err

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(ObjectAccessError, match="access denied") as denied:
        open_pool("s3://pools/nowhere/pool.npz")
    assert "bucket 'pools'" in str(denied.value) and "not-the-secret" not in str(denied.value)

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("BALDFLOW_S3_RETRIES", "2")
    with pytest.raises(ObjectStoreUnreachableError, match="after 2 attempts") as down:
        open_pool("s3://pools/rows/pool")
    assert "key 'rows/pool/pool.json'" in str(down.value) and secret not in str(down.value)


def _decided(workspace: Path) -> list[tuple]:
    with open(workspace / "data" / "tiny" / "ledger.csv", newline="") as f:
        return [(row["round"], row["sample_id"], row["score"]) for row in csv.DictReader(f)]


def test_a_campaign_on_a_pool_in_swift_acquires_what_the_local_copy_acquires(
    s3, tmp_path, tiny_params, prefect_harness
):
    write_disk_source(tmp_path / "source", tiny_params)
    for part in ("pool", "val", "test"):
        convert_pool(tmp_path / "source" / part, f"s3://pools/campaign/{part}")
    local = copy.deepcopy(tiny_params)
    local["data"] = {"source": "disk", "root": str(tmp_path / "source")}
    remote = copy.deepcopy(local)
    remote["data"]["root"] = "s3://pools/campaign"
    check_data(validate(remote))  # the preflight finds the three parts in the bucket
    missing = copy.deepcopy(remote)
    missing["data"]["root"] = "s3://pools/nowhere"
    with pytest.raises(PreflightError, match=r"s3://pools/nowhere lacks a finished pool in pool/"):
        check_data(validate(missing))
    # Only the disk source reads object storage; the others are refused when validated.
    with pytest.raises(ConfigError, match="only data.source 'disk'"):
        validate({**tiny_params, "data": {"source": "digits", "root": "s3://pools/campaign"}})
    run_flow(tmp_path / "local", local, rounds=1)
    result = run_flow(tmp_path / "remote", remote, rounds=1)
    assert result["stopped"] == "rounds"
    assert _decided(tmp_path / "remote") == _decided(tmp_path / "local")
    assert len(_decided(tmp_path / "local")) == 10 + 5  # the initial set, one batch
    # The pool's manifest, versioned each round, was taken from the store's ETags.
    recorded = (tmp_path / "remote" / "data" / "tiny" / "pool-manifest.json").read_text()
    assert '"md5"' in recorded
    # The credentials stay in the environment: the workspace's parameters name only the URL.
    recorded = "".join(p.read_text() for p in (tmp_path / "remote").rglob("*.yaml"))
    assert "s3://pools/campaign" in recorded and s3.secret_key not in recorded
    # The local campaign's pool moved into the bucket is still its pool: the bucket's MD5s
    # (ETags) match the MD5s the local rounds recorded beside their sha256s.
    check(validate(remote), tmp_path / "local")
    # ... and it resumes from the bucket: its next round reads the pool there, the record
    # says where it lies now.
    assert run_flow(tmp_path / "local", remote, rounds=2)["stopped"] == "rounds"
    assert len(_decided(tmp_path / "local")) == 10 + 5 + 5
    record = tmp_path / "local" / "data" / "tiny" / "campaign.yaml"
    assert "s3://pools/campaign" in record.read_text()
    # The pool's object replaced in the bucket (same shape, other rows): the next run is
    # refused before any work, since the rounds were scored on the old content.
    check(validate(remote), tmp_path / "remote")
    changed = tmp_path / "x-changed.npy"
    np.save(changed, np.load(tmp_path / "source" / "pool" / "x.npy")[::-1].copy())
    object_store.upload_file(changed, ObjectURL("pools", "campaign/pool/x.npy"))
    for workspace in ("remote", "local"):
        with pytest.raises(PreflightError, match="is not the pool campaign 'tiny' was scored"):
            check(validate(remote), tmp_path / workspace)
