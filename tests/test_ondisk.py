"""The on-disk pool: round trips by ranges and ids, refusals (incomplete, bad or duplicate ids,
overwrite), shard ranges, the manifest, and that sweeping a pool costs O(shard) memory."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import load_benchmark, write_idx
from hypothesis import given, settings
from hypothesis import strategies as st

from baldflow.data.ondisk import (
    DiskPool,
    IncompletePoolError,
    PoolExistsError,
    PoolIdError,
    PoolWriteError,
    PoolWriter,
)
from baldflow.data.pool_formats import cached_manifest, manifest, same_content, write_manifest
from baldflow.data.row_pool import PoolNotFoundError, PoolRangeError, UnknownIdError, shard_ranges
from baldflow.data.splits import DataSourceError

IDS = ["0", "a,b", "$x", "é/ü 🙂", "<b>", "שלום", "x~r2"]


def _source(n: int, shape=(1, 4, 3), seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    y = rng.integers(-1, 3, size=n).astype(np.int64)
    ids = [IDS[i] if i < len(IDS) else f"s{i}" for i in range(n)]
    return x, y, ids


def _write(directory, x, y, ids, batches=None, **options) -> Path:
    batches = batches or [len(ids)]
    dtype = options.pop("dtype", x.dtype)
    with PoolWriter(directory, x.shape[1:], dtype, len(ids), **options) as writer:
        start = 0
        for size in batches:
            writer.write(
                x[start : start + size], y[start : start + size], ids[start : start + size]
            )
            start += size
    return Path(directory)


def test_round_trip_by_ranges_and_ids(tmp_path):
    x, y, ids = _source(37)
    _write(tmp_path / "p", x, y, ids, batches=[5, 0, 1, 13, 18], class_names=["a", "b", "c"])
    pool = DiskPool.open(tmp_path / "p")
    assert len(pool) == 37 and pool.shape == (37, 1, 4, 3) and pool.class_names == ["a", "b", "c"]
    for start, stop in [(0, 37), (0, 0), (3, 4), (5, 30), (36, 37), (37, 37)]:
        assert torch.equal(pool.rows(start, stop), torch.from_numpy(x[start:stop]))
        assert torch.equal(pool.labels(start, stop), torch.from_numpy(y[start:stop]))
        assert pool.ids(start, stop) == ids[start:stop]
    # The .npy files are plain numpy: anything can read them.
    assert np.array_equal(np.load(tmp_path / "p" / "x.npy"), x)
    wanted = [ids[i] for i in (30, 3, 0, 6, 12)]
    assert pool.positions(wanted).tolist() == [30, 3, 0, 6, 12]
    assert torch.equal(pool.rows_by_ids(wanted), torch.from_numpy(x[[30, 3, 0, 6, 12]]))
    assert pool.labels_by_ids(wanted).tolist() == y[[30, 3, 0, 6, 12]].tolist()
    with pytest.raises(UnknownIdError, match="'nope' is not in the pool"):
        pool.positions(["s8", "nope"])
    with pytest.raises(PoolRangeError, match=r"\[30, 38\)"):
        pool.rows(30, 38)
    with pytest.raises(PoolRangeError):
        pool.ids(5, 4)
    # Pickles as its directory (for Dask workers) and reopens.
    again = pickle.loads(pickle.dumps(pool))
    assert again.ids(3, 5) == ids[3:5] and torch.equal(again.rows(0, 37), pool.rows(0, 37))


def test_uint8_rows_are_scaled_to_float(tmp_path):
    x = np.array([[[0, 255]], [[128, 1]]], dtype=np.uint8)
    pool = DiskPool.open(_write(tmp_path / "u", x, np.array([0, 1]), ["a", "b"]))
    rows = pool.rows(0, 2)
    assert rows.dtype == torch.float32
    assert torch.allclose(rows, torch.from_numpy(x.astype(np.float32) / 255.0))
    assert json.loads((tmp_path / "u" / "pool.json").read_text())["scale"] == pytest.approx(1 / 255)
    custom = DiskPool.open(_write(tmp_path / "c", x, np.array([0, 1]), ["a", "b"], scale=0.5))
    assert custom.rows(1, 2).flatten().tolist() == [64.0, 0.5]
    assert np.array_equal(custom.raw_rows(0, 2), x)
    # A float batch is not silently truncated into a uint8 pool.
    with pytest.raises(PoolWriteError, match="dtype float64"):
        _write(tmp_path / "f", x.astype(np.float64), np.array([0, 1]), ["a", "b"], dtype="uint8")


@settings(max_examples=200, deadline=None)
@given(count=st.integers(0, 10**7), shards=st.integers(1, 2000))
def test_shard_ranges_cover_in_order_and_are_near_equal(count, shards):
    ranges = shard_ranges(count, shards)
    assert len(ranges) == shards
    assert ranges[0][0] == 0 and ranges[-1][1] == count
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    sizes = [stop - start for start, stop in ranges]
    assert min(sizes) >= 0 and max(sizes) - min(sizes) <= 1


def test_pool_shard_ranges(tmp_path):
    x, y, ids = _source(5)
    pool = DiskPool.open(_write(tmp_path / "p", x, y, ids))
    assert pool.shard_ranges(2) == [(0, 2), (2, 5)]
    assert sum(stop - start for start, stop in pool.shard_ranges(8)) == 5
    assert [pool.ids(a, b) for a, b in pool.shard_ranges(8) if a == b][0] == []
    for bad in (0, -1, 1.5, True):
        with pytest.raises(PoolRangeError, match="shards"):
            pool.shard_ranges(bad)


def test_incomplete_pool_is_refused(tmp_path):
    x, y, ids = _source(10)
    with pytest.raises(RuntimeError), PoolWriter(tmp_path / "crash", (1, 4, 3), "float32", 10) as w:
        w.write(x[:4], y[:4], ids[:4])
        raise RuntimeError("the worker died")
    with pytest.raises(IncompletePoolError, match="no pool.json"):
        DiskPool.open(tmp_path / "crash")
    writer = PoolWriter(tmp_path / "short", (1, 4, 3), "float32", 10)
    writer.write(x[:4], y[:4], ids[:4])
    with pytest.raises(PoolWriteError, match="4 of 10 rows written"):
        writer.close()
    with pytest.raises(IncompletePoolError):
        DiskPool.open(tmp_path / "short")
    with pytest.raises(PoolWriteError, match="exceed"):
        PoolWriter(tmp_path / "long", (1, 4, 3), "float32", 9).write(x, y, ids)
    complete = _write(tmp_path / "gone", x, y, ids)
    (complete / "y.npy").unlink()
    with pytest.raises(IncompletePoolError, match="y.npy missing"):
        DiskPool.open(complete)
    with pytest.raises(PoolNotFoundError):
        DiskPool.open(tmp_path / "never")
    assert issubclass(IncompletePoolError, DataSourceError)


@pytest.mark.parametrize(
    ("bad", "what"),
    [("a\nb", r"control character U\+000A"), ("bell\x07", "control"), ("", "empty"), (7, "int")],
)
def test_bad_ids_are_refused_with_their_row(tmp_path, bad, what):
    x, y, ids = _source(6)
    ids[4] = bad
    with pytest.raises(PoolIdError, match=rf"row 4 .*({what})"):
        _write(tmp_path / "p", x, y, ids, batches=[3, 3])
    with pytest.raises(IncompletePoolError):
        DiskPool.open(tmp_path / "p")


def test_duplicate_ids_are_refused_with_both_rows(tmp_path):
    x, y, ids = _source(9)
    ids[7] = ids[2]
    with pytest.raises(PoolIdError, match=r"appears twice: rows 2 and 7"):
        _write(tmp_path / "p", x, y, ids, batches=[4, 5])
    with pytest.raises(IncompletePoolError):
        DiskPool.open(tmp_path / "p")
    # The same text in two Unicode normalisations looks identical: also a duplicate.
    ids = [f"s{i}" for i in range(4)]
    ids[1], ids[3] = "caf\u00e9", "cafe\u0301"
    with pytest.raises(PoolIdError, match=r"Unicode normalisation.*rows 1 and 3"):
        _write(tmp_path / "nfc", x[:4], y[:4], ids)


def test_overwrite_protection(tmp_path):
    x, y, ids = _source(6)
    directory = _write(tmp_path / "p", x, y, ids)
    with pytest.raises(PoolExistsError, match="overwrite=True"):
        PoolWriter(directory, (1, 4, 3), "float32", 6)
    assert torch.equal(DiskPool.open(directory).rows(0, 6), torch.from_numpy(x))
    x2, y2, ids2 = _source(4, seed=1)
    _write(directory, x2, y2, [f"n{i}" for i in range(4)], overwrite=True)
    pool = DiskPool.open(directory)
    assert len(pool) == 4 and pool.ids(0, 1) == ["n0"]
    assert torch.equal(pool.rows(0, 4), torch.from_numpy(x2))
    # An incomplete directory (an earlier run that died) is written over without asking.
    with pytest.raises(RuntimeError), PoolWriter(tmp_path / "q", (1, 4, 3), "float32", 6):
        raise RuntimeError
    _write(tmp_path / "q", x, y, ids)
    assert DiskPool.open(tmp_path / "q").ids(0, 6) == ids


def test_manifest_is_stable_and_sees_one_byte(tmp_path):
    x, y, ids = _source(20)
    directory = _write(tmp_path / "p", x, y, ids, class_names=["a", "b", "c"])
    first = manifest(DiskPool.open(directory))
    assert first == manifest(directory)
    assert (first["count"], first["shape"], first["dtype"]) == (20, [20, 1, 4, 3], "float32")
    written = write_manifest(directory, tmp_path / "pool.manifest.json")
    assert json.loads((tmp_path / "pool.manifest.json").read_text()) == written == first
    assert len(json.dumps(first)) < 2000
    data = bytearray((directory / "x.npy").read_bytes())
    data[-5] ^= 0x01
    (directory / "x.npy").write_bytes(bytes(data))
    changed = manifest(directory)
    assert changed["sha256"] != first["sha256"]
    assert changed["files"]["x.npy"] != first["files"]["x.npy"]
    assert changed["files"]["y.npy"] == first["files"]["y.npy"]


def test_a_pool_and_its_copy_described_by_other_hashes_are_one_content(tmp_path):
    """A local pool's entries carry sha256 and MD5; a bucket's copy only its objects' MD5s
    (their ETags). `same_content` matches them file by file, and still sees one changed byte."""
    import hashlib

    x, y, ids = _source(12)
    directory = _write(tmp_path / "p", x, y, ids)
    local = manifest(directory)
    for name, entry in local["files"].items():
        data = (directory / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                         "md5": hashlib.md5(data).hexdigest()}  # fmt: skip
    # The bucket's copy as object_store.content_entry describes it: size and ETag (its MD5).
    in_bucket = json.loads(json.dumps(local))
    in_bucket["files"] = {
        name: {"bytes": entry["bytes"], "md5": entry["md5"]}
        for name, entry in local["files"].items()
    }
    in_bucket["sha256"] = "0" * 64  # its combined hash is over the MD5s: another value
    assert same_content(local, in_bucket) and same_content(in_bucket, local)
    # One object rewritten, one with no hash in common, another count: not the same content.
    rewritten = json.loads(json.dumps(in_bucket))
    rewritten["files"]["x.npy"]["md5"] = "f" * 32
    assert not same_content(local, rewritten)
    unmatched = json.loads(json.dumps(in_bucket))
    unmatched["files"]["x.npy"] = {"bytes": local["files"]["x.npy"]["bytes"], "sha1": "x"}
    assert not same_content(local, unmatched)
    assert not same_content(local, {**in_bucket, "count": 13})
    older = {**local, "files": {n: {"bytes": e["bytes"], "sha256": e["sha256"]}
                                for n, e in local["files"].items()}}  # fmt: skip
    assert same_content(older, {**local, "sha256": "1" * 64})  # the sha256s still agree


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_sweeping_a_large_pool_costs_a_shard_of_memory(tmp_path):
    """200k 28x28 uint8 rows (157 MB): writing and reading shard by shard keep the resident set
    far below the file's size."""
    n, batch = 200_000, 10_000
    pattern = (np.arange(batch * 784, dtype=np.int64) % 251).astype(np.uint8)
    pattern = pattern.reshape(batch, 1, 28, 28)
    labels = np.arange(batch, dtype=np.int64) % 10
    directory = tmp_path / "big"
    try:
        before = _rss_mb()
        peak = before
        with PoolWriter(directory, (1, 28, 28), "uint8", n) as writer:
            for start in range(0, n, batch):
                writer.write(pattern, labels, [f"r{i}" for i in range(start, start + batch)])
                peak = max(peak, _rss_mb())
        assert peak - before < 60, f"writing grew RSS by {peak - before:.0f} MB"
        assert (directory / "x.npy").stat().st_size > n * 784
        pool = DiskPool.open(directory)
        # Warm up once outside the measurement: torch's first comparison loads library code,
        # which VmRSS counts (file pages), though it has nothing to do with the pool's size.
        first = torch.from_numpy(pattern[:1].astype(np.float32)) / 255.0
        assert torch.allclose(pool.rows(0, 1), first)
        before = _rss_mb()
        peak = before
        for start, stop in pool.shard_ranges(80):  # 2,500 rows: 7.8 MB as float32
            rows = pool.rows(start, stop)
            ids = pool.ids(start, stop)
            peak = max(peak, _rss_mb())
            assert ids[0] == f"r{start}" and len(ids) == stop - start
            offset = start % batch
            expected = torch.from_numpy(pattern[offset].astype(np.float32)) / 255.0
            assert torch.allclose(rows[0], expected)
            del rows, ids
        assert peak - before < 60, f"reading grew RSS by {peak - before:.0f} MB"
        assert pool.positions(["r199999", "r0"]).tolist() == [199_999, 0]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_make_pool_streams_noisy_copies_of_fashion_mnist(tmp_path, capsys):
    make_pool = load_benchmark("make_pool")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(12) % 10)
    out = tmp_path / "pool"
    make_pool.main(["--count", "30", "--out", str(out), "--fashion-root", str(tmp_path)])
    assert "fashion-mnist" in capsys.readouterr().out
    pool = DiskPool.open(out)
    assert pool.ids(0, 2) == ["0", "1"] and pool.ids(12, 13) == ["0~r1"]
    assert pool.ids(29, 30) == ["5~r2"] and pool.labels(24, 30).tolist() == [0, 1, 2, 3, 4, 5]
    copy0, copy1 = pool.raw_rows(0, 12), pool.raw_rows(12, 24)
    assert not np.array_equal(copy0, copy1)
    assert np.abs(copy0.astype(int) - images[:, None]).mean() < 40  # noisy, still the image
    # Same seed, same bytes; another count keeps the rows they share.
    make_pool.main(["--count", "14", "--out", str(tmp_path / "b"), "--fashion-root", str(tmp_path)])
    assert np.array_equal(DiskPool.open(tmp_path / "b").raw_rows(0, 14), pool.raw_rows(0, 14))
    make_pool.build(tmp_path / "s", 20, seed=1, dtype="float32", synthetic=True)
    synthetic = DiskPool.open(tmp_path / "s")
    assert synthetic.dtype == np.float32 and synthetic.ids(19, 20) == ["syn19"]


def test_cached_manifest_hashes_once_and_notices_a_rewritten_file(tmp_path, monkeypatch):
    import baldflow.data.ondisk as ondisk

    x, y, ids = _source(40)
    directory = _write(tmp_path / "pool", x, y, ids)
    cache = tmp_path / "cache"
    with DiskPool.open(directory) as pool:
        first = cached_manifest(pool, cache)
        assert first == manifest(pool)

        def no_hashing(path):
            raise AssertionError(f"hashed {path} again")

        monkeypatch.setattr(ondisk, "file_entry", no_hashing)
        assert cached_manifest(pool, cache) == first
        monkeypatch.undo()
    # A rewritten pool (same size, new bytes) gets a new hash, not the cached one.
    _write(tmp_path / "pool", x[::-1].copy(), y, ids, overwrite=True)
    with DiskPool.open(directory) as pool:
        again = cached_manifest(pool, cache)
        assert again["sha256"] != first["sha256"] and again == manifest(pool)
