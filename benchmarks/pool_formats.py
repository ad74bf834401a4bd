"""What reading a pool costs in each format a campaign reads in place: a DiskPool directory, an
uncompressed .npz and an image folder of PNGs.

Why: sharded scoring reads every pool row once per round; the format decides whether reading is
noise next to the K forward passes (positioned reads of raw arrays) or a cost of its own (an
image decoded per row). This prints, per format: the time to open it (the image folder lists
its files), rows/s of reading the whole pool shard by shard as float32, the process's peak
resident memory while doing so (the imported torch is most of it), and the K=20 CNN scoring
rate for comparison. It also checks that every format reads the same float32 rows as the
DiskPool (bit for bit).

    python benchmarks/pool_formats.py                 # 20,000 28x28 images
    python benchmarks/pool_formats.py --count 100000  # the image folder then holds 100k files
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from make_pool import peak_rss_mb, reset_peak_rss
from PIL import Image

from baldflow.data.ondisk import PoolWriter
from baldflow.data.pool_formats import open_pool
from baldflow.inference import score_pool
from baldflow.models import build_model

CLASSES = [f"class-{i}" for i in range(10)]
SHARD_ROWS = 4096


def write_formats(root: Path, count: int, seed: int) -> dict[str, Path]:
    """The same `count` synthetic 28x28 uint8 images (blobs on noise, so PNG compresses them as
    it would real scans) in all three formats, rows in the image folder's listing order."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), size=count)
    ids = [f"{CLASSES[c]}/{i // 1000:04d}/img-{i:07d}.png" for i, c in enumerate(labels)]
    order = sorted(range(count), key=lambda i: (labels[i], ids[i]))
    ids = [ids[i] for i in order]
    labels = labels[order]
    grid = np.indices((28, 28)).transpose(1, 2, 0)
    x = np.empty((count, 28, 28), dtype=np.uint8)
    for start in range(0, count, 10000):
        stop = min(count, start + 10000)
        centres = rng.uniform(6, 22, size=(stop - start, 1, 1, 2))
        blob = np.exp(-((grid[None] - centres) ** 2).sum(-1) / 30.0)
        noise = rng.normal(0, 0.1, size=blob.shape)
        x[start:stop] = np.clip((blob + noise) * 255, 0, 255).astype(np.uint8)
    paths = {
        "pool directory": root / "disk",
        "npz": root / "pool.npz",
        "image folder": root / "tree",
    }
    with PoolWriter(paths["pool directory"], (1, 28, 28), "uint8", count, class_names=CLASSES) as w:
        for start in range(0, count, 50000):
            stop = min(count, start + 50000)
            w.write(x[start:stop, None], labels[start:stop], ids[start:stop])
    np.savez(paths["npz"], x=x, y=labels.astype(np.int64), ids=np.array(ids),
             class_names=np.array(CLASSES))  # fmt: skip
    for sample_id, pixels in zip(ids, x, strict=True):
        path = paths["image folder"] / sample_id
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(path)
    return paths


def measure(name: str, path: Path, reference: torch.Tensor | None) -> torch.Tensor:
    reset_peak_rss()  # the peak printed is this format's, not the writing's
    began = time.perf_counter()
    pool = open_pool(path)
    opened = time.perf_counter() - began
    began = time.perf_counter()
    checksum = torch.zeros((), dtype=torch.float64)
    first = None
    for start in range(0, len(pool), SHARD_ROWS):
        rows = pool.rows(start, min(len(pool), start + SHARD_ROWS))
        checksum += rows.double().sum()
        if first is None:
            first = rows
    seconds = time.perf_counter() - began
    same = (
        ""
        if reference is None
        else f", same rows as the pool directory: {torch.equal(first, reference)}"
    )
    print(
        f"{name:15s} open {opened:6.3f} s  read {len(pool) / seconds:10,.0f} rows/s  "
        f"peak RSS {peak_rss_mb():6.0f} MB{same}",
        flush=True,
    )
    return first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="pool-formats-") as tmp:
        began = time.perf_counter()
        paths = write_formats(Path(tmp), args.count, args.seed)
        print(
            f"{args.count:,} images written in three formats in {time.perf_counter() - began:.1f} s"
        )
        reference = None
        for name, path in paths.items():
            rows = measure(name, path, reference)
            reference = rows if reference is None else reference
        model = build_model("cnn", (1, 28, 28), len(CLASSES), seed=0)
        sample = reference[:2048]
        began = time.perf_counter()
        score_pool(model, sample, "bald", 20, torch.Generator().manual_seed(0), 256)
        rate = len(sample) / (time.perf_counter() - began)
        print(f"for comparison, scoring (cnn, K=20, 1 thread): {rate:,.0f} samples/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
