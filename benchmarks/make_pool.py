"""Build a large 28x28 pool on disk by streaming, to measure what a million-sample pool costs.

Why: the on-disk pool (baldflow/data/ondisk.py) must be buildable without ever holding N rows in
memory; this script is both the proof (it prints seconds, MB on disk and peak RSS) and the way
to make a big pool for scoring benchmarks.

Source: Fashion-MNIST's training IDX files when they are on this machine (Debian's
dataset-fashion-mnist puts them under /usr/share/datasets/fashion-mnist; or --fashion-root),
repeated as noisy copies: row r is copy r // 60000 of training image r % 60000, with Gaussian
noise from a generator seeded by (seed, copy) and id "<source index>~r<copy>" (copy 0 keeps the
plain index, as `baldflow.data.repeat` does). Without them, synthetic images: ten fixed smooth
class prototypes plus per-row noise, ids "syn<row>". The script says which it used. Nothing is
downloaded.

    python benchmarks/make_pool.py --count 1000000 --out /tmp/pool --dtype uint8

With --campaign-source, --out is a disk source for a campaign (`baldflow.data.disk_source`):
the pool above in <out>/pool, plus labelled validation and test sets in <out>/val and
<out>/test (same shape, dtype and class names) from Fashion-MNIST's test IDX files (validation
the first --val-count images, test the next --test-count, with the pool's noise from another
stream) or, without them, from the synthetic generator's prototypes with noise and labels from
another stream. Their ids ("val<i>", "test<i>") name the part.

    python benchmarks/make_pool.py --campaign-source --count 100000 --out /tmp/source
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from baldflow.data.ondisk import DiskPool, PoolWriter
from baldflow.data.sources import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    _find_idx,
    read_idx,
)

SIDE = 28
BATCH = 8192
# Noise of each copy, in units of the [0, 1] pixel range (RepeatedMNIST uses 0.1 on normalised
# features, about 0.035 in pixel units for Fashion-MNIST; larger makes copies visibly distinct).
NOISE_STD = 0.1

Batch = tuple[np.ndarray, np.ndarray, list[str]]


def _to_dtype(images01: np.ndarray, dtype: str) -> np.ndarray:
    """[0, 1]-range float32 to the stored dtype (uint8 rounds and clips to 0..255), in place
    where possible: a batch's temporaries are what the build's memory is made of."""
    if dtype == "uint8":
        np.multiply(images01, 255.0, out=images01)
        np.rint(images01, out=images01)
        np.clip(images01, 0, 255, out=images01)
        return images01.astype(np.uint8)
    return images01


def fashion_batches(root: Path, count: int, seed: int, dtype: str) -> Iterator[Batch]:
    """Noisy copies of the Fashion-MNIST training set, copy-major. Each copy's noise is drawn
    from its own generator in row order, so a row's pixels depend only on (seed, copy, row),
    not on how many rows are built."""
    images = read_idx(_find_idx(root, "train-images-idx3-ubyte"))  # 47 MB, read once
    labels = read_idx(_find_idx(root, "train-labels-idx1-ubyte")).astype(np.int64)
    n_source = images.shape[0]
    done = 0
    copy = 0
    while done < count:
        generator = np.random.default_rng([seed, copy])
        for start in range(0, n_source, BATCH):
            if done >= count:
                break
            stop = min(start + BATCH, n_source, start + count - done)
            clean = images[start:stop].astype(np.float32) / 255.0
            noise = generator.standard_normal(clean.shape, dtype=np.float32)
            noise *= NOISE_STD
            clean += noise
            del noise
            x = _to_dtype(clean, dtype)[:, None]
            ids = [str(i) if copy == 0 else f"{i}~r{copy}" for i in range(start, stop)]
            yield x, labels[start:stop], ids
            done += stop - start
        copy += 1


def synthetic_batches(
    count: int, seed: int, dtype: str, *, stream: int = 0, id_prefix: str = "syn"
) -> Iterator[Batch]:
    """Ten smooth class prototypes (sums of random 2-D cosines, fixed by the seed) plus noise;
    batch b's labels and noise come from a generator seeded by (seed, b), or by
    (seed, stream, b) for another `stream`: the same classes with other samples, which is what
    validation and test sets need (another seed would make other classes)."""
    setup = np.random.default_rng([seed, 2**31])
    grid = np.linspace(0.0, 1.0, SIDE, dtype=np.float32)
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    prototypes = np.zeros((10, SIDE, SIDE), dtype=np.float32)
    for c in range(10):
        for _ in range(4):
            fy, fx, phase = setup.uniform(0.5, 3.0), setup.uniform(0.5, 3.0), setup.uniform(0, 6)
            prototypes[c] += np.cos(2 * np.pi * (fy * gy + fx * gx) + phase)
    low = prototypes.min(axis=(1, 2), keepdims=True)
    high = prototypes.max(axis=(1, 2), keepdims=True)
    prototypes = (prototypes - low) / (high - low)
    for batch, start in enumerate(range(0, count, BATCH)):
        stop = min(start + BATCH, count)
        generator = np.random.default_rng([seed, batch] if stream == 0 else [seed, stream, batch])
        y = generator.integers(0, 10, size=stop - start, dtype=np.int64)
        x = generator.standard_normal((stop - start, SIDE, SIDE), dtype=np.float32)
        x *= NOISE_STD
        x += prototypes[y]
        x = _to_dtype(x, dtype)[:, None]
        yield x, y, [f"{id_prefix}{i}" for i in range(start, stop)]


def fashion_test_batches(
    root: Path, start: int, count: int, seed: int, dtype: str, *, stream: int, id_prefix: str
) -> Iterator[Batch]:
    """Fashion-MNIST test images [start, start + count) with the pool's noise level, drawn from
    a generator seeded by (seed, stream): held-out images that look like the pool's."""
    images = read_idx(_find_idx(root, "t10k-images-idx3-ubyte"))
    labels = read_idx(_find_idx(root, "t10k-labels-idx1-ubyte")).astype(np.int64)
    if start + count > images.shape[0]:
        raise SystemExit(
            f"Fashion-MNIST's test set has {images.shape[0]} images; validation and test "
            f"together asked for {start + count}"
        )
    generator = np.random.default_rng([seed, stream])
    for first in range(start, start + count, BATCH):
        stop = min(first + BATCH, start + count)
        clean = images[first:stop].astype(np.float32) / 255.0
        noise = generator.standard_normal(clean.shape, dtype=np.float32)
        noise *= NOISE_STD
        clean += noise
        x = _to_dtype(clean, dtype)[:, None]
        yield x, labels[first:stop], [f"{id_prefix}{i - start}" for i in range(first, stop)]


def fashion_root(explicit: str | None) -> Path | None:
    """The directory holding Fashion-MNIST's training IDX files, or None when absent."""
    root = Path(explicit or FASHION_MNIST_ROOT)
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    return root if all(_find_idx(root, s) is not None for s in stems) else None


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so the peak measured next belongs to
    the build and not to importing torch (which alone peaks near 500 MB)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set since the last reset (VmHWM), else since the process started."""
    high = _status_mb("VmHWM")
    return high if high is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(
    out: Path,
    count: int,
    seed: int = 0,
    dtype: str = "uint8",
    fashion: str | None = None,
    overwrite: bool = False,
    synthetic: bool = False,
) -> dict:
    """Write the pool; returns what was measured (source, seconds, bytes, peak RSS)."""
    root = None if synthetic else fashion_root(fashion)
    if fashion is not None and root is None:
        raise SystemExit(f"no Fashion-MNIST training IDX files in {fashion}")
    if root is not None:
        source, batches = f"fashion-mnist ({root})", fashion_batches(root, count, seed, dtype)
    else:
        source, batches = "synthetic", synthetic_batches(count, seed, dtype)
    reset_peak_rss()
    peak_before = peak_rss_mb()
    started = time.perf_counter()
    with PoolWriter(
        out,
        (1, SIDE, SIDE),
        dtype,
        count,
        class_names=FASHION_MNIST_CLASSES if root is not None else [f"c{i}" for i in range(10)],
        overwrite=overwrite,
    ) as writer:
        for x, y, ids in batches:
            writer.write(x, y, ids)
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in Path(out).iterdir() if p.is_file())
    return {
        "source": source,
        "seconds": seconds,
        "bytes": size,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_before_mb": peak_before,
    }


# The noise/label streams of the held-out parts (the pool uses stream 0 / (seed, copy)).
HELD_OUT_STREAMS = {"val": 1_000_001, "test": 1_000_002}


def build_source(
    out: Path,
    count: int,
    *,
    seed: int = 0,
    val_count: int = 1000,
    test_count: int = 1000,
    dtype: str = "uint8",
    fashion: str | None = None,
    overwrite: bool = False,
    synthetic: bool = False,
) -> dict:
    """Write a disk source for a campaign: `build`'s pool in <out>/pool, then labelled
    validation and test sets in <out>/val and <out>/test with the same shape, dtype and class
    names, from the same source as the pool (see the module docstring). Returns `build`'s
    measurements plus "root", and "val"/"test" with each part's source and count."""
    for name, value in (("count", count), ("val_count", val_count), ("test_count", test_count)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SystemExit(f"{name} must be an integer >= 1, got {value!r}")
    out = Path(out)
    root = None if synthetic else fashion_root(fashion)
    if fashion is not None and root is None:
        raise SystemExit(f"no Fashion-MNIST training IDX files in {fashion}")
    test_stems = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    if root is not None and any(_find_idx(root, stem) is None for stem in test_stems):
        raise SystemExit(
            f"{root} has Fashion-MNIST's training IDX files but not its test ones "
            f"({', '.join(test_stems)}): validation and test need them"
        )
    if root is not None:  # checked before any writing: the labels file is 10 kB
        available = read_idx(_find_idx(root, test_stems[1])).shape[0]
        if val_count + test_count > available:
            raise SystemExit(
                f"Fashion-MNIST's test set has {available} images; validation and test "
                f"together asked for {val_count + test_count}"
            )
    result = build(
        out / "pool",
        count,
        seed,
        dtype,
        str(root) if root is not None else None,
        overwrite,
        synthetic=root is None,
    )
    result["root"] = str(out)
    class_names = FASHION_MNIST_CLASSES if root is not None else [f"c{i}" for i in range(10)]
    offsets = {"val": 0, "test": val_count}
    for part, part_count in (("val", val_count), ("test", test_count)):
        stream = HELD_OUT_STREAMS[part]
        if root is not None:
            batches = fashion_test_batches(
                root, offsets[part], part_count, seed, dtype, stream=stream, id_prefix=part
            )
            source = f"fashion-mnist test images ({root})"
        else:
            batches = synthetic_batches(part_count, seed, dtype, stream=stream, id_prefix=part)
            source = "synthetic"
        with PoolWriter(
            out / part,
            (1, SIDE, SIDE),
            dtype,
            part_count,
            class_names=class_names,
            overwrite=overwrite,
        ) as writer:
            for x, y, ids in batches:
                writer.write(x, y, ids)
        result[part] = {"source": source, "count": part_count}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/baldflow-pool"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["uint8", "float32"], default="uint8")
    parser.add_argument(
        "--fashion-root", default=None, help=f"Fashion-MNIST IDX directory ({FASHION_MNIST_ROOT})"
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="synthetic images even if Fashion-MNIST is here"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a complete pool")
    parser.add_argument("--delete", action="store_true", help="delete the pool when measured")
    parser.add_argument(
        "--sweep", type=int, default=0, help="then read it back in this many shards, timed"
    )
    parser.add_argument(
        "--campaign-source",
        action="store_true",
        help="write a disk source for a campaign: <out>/pool, <out>/val and <out>/test",
    )
    parser.add_argument("--val-count", type=int, default=1000, help="with --campaign-source")
    parser.add_argument("--test-count", type=int, default=1000, help="with --campaign-source")
    args = parser.parse_args(argv)
    if args.campaign_source:
        result = build_source(
            args.out,
            args.count,
            seed=args.seed,
            val_count=args.val_count,
            test_count=args.test_count,
            dtype=args.dtype,
            fashion=args.fashion_root,
            overwrite=args.overwrite,
            synthetic=args.synthetic,
        )
    else:
        result = build(
            args.out,
            args.count,
            args.seed,
            args.dtype,
            args.fashion_root,
            args.overwrite,
            args.synthetic,
        )
    pool_dir = args.out / "pool" if args.campaign_source else args.out
    mb = result["bytes"] / 1e6
    print(f"source: {result['source']}")
    print(
        f"wrote {args.count:,} rows ({args.dtype}) to {pool_dir} in {result['seconds']:.1f} s "
        f"({args.count / result['seconds']:,.0f} rows/s, {mb / result['seconds']:.0f} MB/s); "
        f"{mb:,.1f} MB on disk; peak RSS {result['peak_rss_mb']:.0f} MB "
        f"(at the start of writing: {result['peak_rss_before_mb']:.0f} MB)"
    )
    if args.campaign_source:
        for part in ("val", "test"):
            print(f"{part}: {result[part]['count']:,} rows from {result[part]['source']}")
        print(f"disk source for a campaign: {args.out}")
    if args.sweep:
        reset_peak_rss()
        started = time.perf_counter()
        pool = DiskPool.open(pool_dir)
        total = 0.0
        for start, stop in pool.shard_ranges(args.sweep):
            total += float(pool.rows(start, stop).sum())
            pool.ids(start, stop)
        print(
            f"read back in {args.sweep} shards (float rows + ids) in "
            f"{time.perf_counter() - started:.1f} s; peak RSS {peak_rss_mb():.0f} MB"
        )
    if args.delete:
        shutil.rmtree(args.out)
        print(f"deleted {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
