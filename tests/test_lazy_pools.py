"""Pools read in place (baldflow.data.lazy_pools): an uncompressed .npz and an image folder, on
real files. Each reads the rows, labels and ids a DiskPool holding the same data reads, scores
to the same bits shard by shard, and refuses what it cannot read with the fix."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from baldflow.cli import main as cli_main
from baldflow.compute.sharding import (
    ShardJob,
    save_model_dir,
    score_pool_sharded,
    single_pool_scores,
)
from baldflow.config import validate
from baldflow.data import open_disk_source
from baldflow.data.convert import convert_pool
from baldflow.data.disk_source import DiskSourceError
from baldflow.data.lazy_pools import ImageFolderPool, NpzPool
from baldflow.data.ondisk import DiskPool, PoolExistsError, PoolWriter
from baldflow.data.pool_formats import cached_manifest, manifest, open_pool
from baldflow.data.row_pool import PoolFormatError, PoolNotFoundError, UnknownIdError
from baldflow.models import build_model
from baldflow.preflight import check_data

CLASSES = ["cat", "dog", "emu"]
# Untrusted but acceptable ids: markup, a formula, a quote, another script, an emoji.
ODD_IDS = ["<b>x</b>", "=1+1", 'say "hi"', "наблюдение", "🐈 7"]


def _images(n: int, seed: int, shape=(6, 5)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = rng.integers(0, len(CLASSES), size=n).astype(np.int64)
    return x, y


def _write_npz(path: Path, n: int = 40, seed: int = 0, *, ids=True, compressed=False, **extra):
    x, y = _images(n, seed)
    arrays = {"x": x, "y": y, "class_names": np.array(CLASSES)}
    if ids:
        arrays["ids"] = np.array(ODD_IDS + [f"s{i}" for i in range(len(ODD_IDS), n)])
    arrays.update(extra)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return x, y, arrays.get("ids")


def test_npz_pool_reads_rows_labels_and_ids_in_place(tmp_path):
    x, y, ids = _write_npz(tmp_path / "pool.npz")
    pool = open_pool(tmp_path / "pool.npz")
    assert isinstance(pool, NpzPool) and len(pool) == 40
    assert pool.sample_shape == (1, 6, 5) and pool.class_names == CLASSES  # a channel axis added
    expected = torch.from_numpy(x[:, None].astype(np.float32) * np.float32(1 / 255))
    assert torch.equal(pool.rows(0, 40), expected)
    assert torch.equal(pool.rows(7, 9), expected[7:9])
    assert pool.labels(3, 11).tolist() == y[3:11].tolist()
    assert pool.ids(0, 40) == ids.tolist() and pool.ids(0, 2) == ODD_IDS[:2]
    assert pool.positions(["=1+1", "s30"]).tolist() == [1, 30]
    assert torch.equal(pool.rows_by_ids(["s30", "🐈 7"]), expected[[30, 4]])
    assert pool.labels_by_ids(["s30", "<b>x</b>"]).tolist() == [y[30], y[0]]
    with pytest.raises(UnknownIdError, match="not in the pool"):
        pool.positions(["nope"])
    pool.check_ids()
    again = pickle.loads(pickle.dumps(pool))  # what a Dask worker gets: the path, reopened
    assert isinstance(again, NpzPool) and again.ids(5, 6) == ["s5"]
    # Memory: the pool is not loaded; only the requested rows are read.
    assert pool.raw_rows(2, 3).shape == (1, 1, 6, 5)


def test_npz_without_ids_uses_row_numbers_and_big_x_key(tmp_path):
    x, y = _images(12, 1)
    np.savez(tmp_path / "plain.npz", X=x.astype(np.float32), y=y.astype(np.int32))
    pool = open_pool(tmp_path / "plain.npz")
    assert pool.ids(0, 3) == ["0", "1", "2"] and pool.class_names is None
    assert pool.labels(0, 12).dtype == torch.int64 and pool.labels(0, 12).tolist() == y.tolist()
    assert torch.equal(pool.rows(0, 12)[:, 0], torch.from_numpy(x.astype(np.float32)))


def test_npz_pools_that_cannot_be_read_in_place_are_refused_with_the_fix(tmp_path):
    _write_npz(tmp_path / "packed.npz", compressed=True)
    with pytest.raises(PoolFormatError, match=r"compressed.*re-save it with np.savez"):
        open_pool(tmp_path / "packed.npz")
    x, y = _images(5, 2)
    np.savez(tmp_path / "noy.npz", x=x)
    with pytest.raises(PoolFormatError, match="needs arrays x .or X. and y"):
        open_pool(tmp_path / "noy.npz")
    np.savez(tmp_path / "wide.npz", x=x.astype(np.float64), y=y)
    with pytest.raises(PoolFormatError, match="float64.*uint8 or float32"):
        open_pool(tmp_path / "wide.npz")
    np.savez(tmp_path / "short.npz", x=x, y=y[:4])
    with pytest.raises(PoolFormatError, match="needs 5 integers"):
        open_pool(tmp_path / "short.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(PoolFormatError, match="not an .npz"):
        open_pool(tmp_path / "junk.npz")
    with pytest.raises(PoolNotFoundError, match="does not exist"):
        open_pool(tmp_path / "missing.npz")


def test_untrusted_ids_of_a_pool_read_in_place_are_checked(tmp_path):
    x, y = _images(4, 3)
    np.savez(tmp_path / "dup.npz", x=x, y=y, ids=np.array(["a", "b", "c", "b"]))
    with pytest.raises(PoolFormatError, match=r"rows 1 and 3 have the same id 'b'"):
        open_pool(tmp_path / "dup.npz").check_ids()
    np.savez(tmp_path / "nl.npz", x=x, y=y, ids=np.array(["a", "b\nc", "d", "e"]))
    with pytest.raises(PoolFormatError, match="row 1 has the id"):
        open_pool(tmp_path / "nl.npz").check_ids()
    np.savez(tmp_path / "bytes.npz", x=x, y=y, ids=np.array([b"a", b"\xff", b"c", b"d"]))
    with pytest.raises(PoolFormatError, match="ids entry 1 .* is not UTF-8"):
        open_pool(tmp_path / "bytes.npz").ids(0, 4)


def _write_folder(root: Path, x: np.ndarray, y: np.ndarray, mode: str = "L") -> list[str]:
    """Images under root/<class>/ (every third one in a sub-folder), in the sorted order an
    ImageFolderPool lists them; returns their ids."""
    entries = []
    for i, (pixels, label) in enumerate(zip(x, y, strict=True)):
        sub = "more/" if i % 3 == 0 else ""
        relative = f"{CLASSES[label]}/{sub}img-{i:03d}.png"
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode=mode).save(path)
        entries.append(relative)
    return entries


def test_image_folder_pool_decodes_rows_when_read(tmp_path):
    x, y = _images(30, 4)
    ids = _write_folder(tmp_path / "tree", x, y)
    (tmp_path / "tree" / "cat" / "notes.txt").write_text("not an image")  # ignored
    pool = open_pool(tmp_path / "tree")
    assert isinstance(pool, ImageFolderPool) and len(pool) == 30
    assert pool.class_names == CLASSES and pool.sample_shape == (1, 6, 5)
    order = sorted(range(30), key=lambda i: (y[i], ids[i]))  # by class folder, then path
    assert pool.ids(0, 30) == [ids[i] for i in order]
    assert pool.labels(0, 30).tolist() == [int(y[i]) for i in order]
    assert np.array_equal(pool.raw_rows(0, 30)[:, 0], x[order])
    scaled = torch.from_numpy(x[5].astype(np.float32) * np.float32(1 / 255))
    assert torch.equal(pool.rows_by_ids([ids[5]])[0, 0], scaled)
    pool.check_ids()
    assert pickle.loads(pickle.dumps(pool)).ids(0, 1) == pool.ids(0, 1)

    # An image added later is seen by the next open (the listing is cached per folder mtimes).
    Image.fromarray(x[0], mode="L").save(tmp_path / "tree" / "emu" / "zzz.png")
    assert len(open_pool(tmp_path / "tree")) == 31

    rgb = np.random.default_rng(5).integers(0, 256, size=(4, 6, 5, 3), dtype=np.uint8)
    rgb_ids = _write_folder(tmp_path / "rgb", rgb, np.array([0, 1, 1, 2]), mode="RGB")
    colour = open_pool(tmp_path / "rgb")
    assert colour.sample_shape == (3, 6, 5)
    assert np.array_equal(colour.raw_rows(0, 1)[0], rgb[0].transpose(2, 0, 1))
    assert colour.ids(0, 4) == rgb_ids


def test_image_folders_that_cannot_be_read_are_refused_naming_the_file(tmp_path):
    x, y = _images(6, 6)
    _write_folder(tmp_path / "tree", x, y)
    odd = tmp_path / "tree" / "emu" / "odd.png"
    Image.fromarray(np.zeros((7, 7), dtype=np.uint8), mode="L").save(odd)
    pool = open_pool(tmp_path / "tree")
    with pytest.raises(PoolFormatError, match=r"odd.png is 7x7 but the pool's images are 5x6"):
        pool.raw_rows(0, len(pool))
    odd.write_bytes(b"not a png")
    with pytest.raises(PoolFormatError, match="odd.png is not a readable image"):
        open_pool(tmp_path / "tree").raw_rows(0, len(pool))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(PoolNotFoundError, match="no images found"):
        open_pool(tmp_path / "empty")
    (tmp_path / "bad\u202ename").mkdir()  # a bidi override in a class folder's name
    Image.fromarray(x[0], mode="L").save(tmp_path / "bad\u202ename" / "a.png")
    with pytest.raises(PoolFormatError, match="class folder"):
        open_pool(tmp_path)


def test_manifests_name_the_format_and_follow_the_content(tmp_path):
    _write_npz(tmp_path / "pool.npz")
    first = manifest(tmp_path / "pool.npz")
    assert first["source"] == "npz" and first["count"] == 40 and "pool.npz" in first["files"]
    cache = tmp_path / "cache"
    assert cached_manifest(open_pool(tmp_path / "pool.npz"), cache) == first
    _write_npz(tmp_path / "pool.npz", seed=9)
    changed = cached_manifest(open_pool(tmp_path / "pool.npz"), cache)
    assert changed["sha256"] != first["sha256"]

    x, y = _images(9, 7)
    ids = _write_folder(tmp_path / "tree", x, y)
    tree = manifest(tmp_path / "tree")
    assert tree["source"] == "image-folder" and tree["files"]["images"]["count"] == 9
    Image.fromarray(255 - x[2], mode="L").save(tmp_path / "tree" / ids[2])  # same name
    assert manifest(tmp_path / "tree")["sha256"] != tree["sha256"]


def test_every_format_scores_to_the_same_bits_shard_by_shard(tmp_path):
    """One pool written three ways (a DiskPool, an .npz, an image folder): the sharded scores
    and batch of each equal the DiskPool's single-process ones."""
    n = 240
    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 3, size=n).astype(np.int64)
    folder_ids = _write_folder(tmp_path / "tree", x, y)
    order = sorted(range(n), key=lambda i: (y[i], folder_ids[i]))
    ids = [folder_ids[i] for i in order]  # every format lists the rows in the folder's order
    np.savez(tmp_path / "pool.npz", x=x[order], y=y[order], ids=np.array(ids))
    with PoolWriter(tmp_path / "disk", (1, 28, 28), "uint8", n, class_names=CLASSES) as w:
        w.write(x[order][:, None], y[order], ids)
    save_model_dir(build_model("cnn", (1, 28, 28), 3, seed=3), tmp_path / "model")

    def job(pool: Path) -> ShardJob:
        return ShardJob(str(tmp_path / "model"), str(pool), score="bald", mc_samples=4, mask_seed=2,
                        chunk_size=32, batch_size=8, selection_seed=1)  # fmt: skip

    reference_scores, reference_ids = single_pool_scores(job(tmp_path / "disk"))
    assert reference_ids == ids
    reference_batch, _ = score_pool_sharded(job(tmp_path / "disk"), 1)
    for pool in (tmp_path / "pool.npz", tmp_path / "tree"):
        scores, got_ids = single_pool_scores(job(pool))
        assert got_ids == ids and torch.equal(scores, reference_scores)
        batch, stats = score_pool_sharded(job(pool), [(0, 0), (0, 77), (77, 200), (200, n)])
        assert batch == reference_batch and stats.rows == n


def test_a_disk_source_of_an_npz_pool_and_image_folders(tmp_path, tiny_params):
    root = tmp_path / "source"
    root.mkdir()
    _write_npz(root / "pool.npz", n=60)
    for part, seed in (("val", 11), ("test", 12)):
        x, y = _images(9, seed)
        y[:3] = [0, 1, 2]  # every class present, so the folders' class names agree
        _write_folder(root / part, x, y)
    tiny_params["data"] = {"source": "disk", "root": str(root)}
    check_data(validate(tiny_params))  # preflight accepts both forms
    source = open_disk_source(root, initial_per_class=2, seed=0)
    assert isinstance(source.pool, NpzPool) and source.count == 60
    assert source.class_names == CLASSES and source.val_x.shape == (9, 1, 6, 5)
    assert len(source.initial_ids) == 6
    again = open_disk_source(root, initial_per_class=2, seed=0)
    assert again.initial_ids == source.initial_ids

    os.remove(root / "pool.npz")
    np.savez(root / "pool.npz", x=_images(3, 0)[0], y=np.zeros(3, dtype=np.int64),
             ids=np.array(["a", "a", "b"]), class_names=np.array(CLASSES))  # fmt: skip
    with pytest.raises(DiskSourceError, match=r"pool.npz is not a usable pool.*same id"):
        open_disk_source(root, initial_per_class=1, seed=0)


def test_convert_writes_a_pool_directory_that_reads_the_same(tmp_path, capsys):
    x, y = _images(25, 13)
    _write_folder(tmp_path / "tree", x, y)
    folder = open_pool(tmp_path / "tree")
    copy = convert_pool(folder, tmp_path / "copy", chunk_rows=7)  # chunks end mid-class
    assert isinstance(copy, DiskPool) and copy.class_names == CLASSES
    assert copy.ids(0, 25) == folder.ids(0, 25)
    assert torch.equal(copy.rows(0, 25), folder.rows(0, 25))
    assert torch.equal(copy.labels(0, 25), folder.labels(0, 25))

    # Never into a complete pool, a file, or a folder of other files (the source itself).
    for target, why in ((tmp_path / "copy", "complete pool"), (tmp_path / "tree", "not empty")):
        with pytest.raises(PoolExistsError, match=why):
            convert_pool(folder, target)
    # An unfinished conversion (pool files, no pool.json) is simply done again.
    (tmp_path / "copy" / "pool.json").unlink()
    assert len(convert_pool(folder, tmp_path / "copy")) == 25
    np.savez(tmp_path / "dup.npz", x=x[:2], y=y[:2], ids=np.array(["a", "a"]))
    with pytest.raises(PoolFormatError, match="same id"):
        convert_pool(tmp_path / "dup.npz", tmp_path / "never")
    assert not (tmp_path / "never").exists()  # refused before anything was written

    # The command line: describe, convert with progress, describe the copy.
    assert cli_main(["pool", "info", str(tmp_path / "tree"), "--manifest"]) == 0
    shown = capsys.readouterr().out
    counts = ", ".join(f"{c}: {int((y == i).sum())}" for i, c in enumerate(CLASSES))
    assert "ImageFolderPool, 25 rows of [1, 6, 5] uint8" in shown
    assert f"labels: {counts}; unknown (-1): 0" in shown and "content sha256: " in shown
    assert cli_main(["pool", "convert", str(tmp_path / "tree"), str(tmp_path / "cli")]) == 0
    assert "25 / 25 rows" in capsys.readouterr().out
    assert cli_main(["pool", "info", str(tmp_path / "cli")]) == 0
    assert "DiskPool, 25 rows" in capsys.readouterr().out
    assert cli_main(["pool", "convert", str(tmp_path / "tree"), str(tmp_path / "cli")]) == 1
    assert "PoolExistsError" in capsys.readouterr().err
