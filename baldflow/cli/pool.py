"""`pool`: describe a pool on disk, or convert one into a pool directory (data.source: disk)."""

from __future__ import annotations

import argparse
import sys

from baldflow.cli.common import EXIT_ERROR


# ---------------------------------------------------------------------------- parsers
def add_pool(sub) -> None:
    p = sub.add_parser(
        "pool",
        help="describe a pool on disk, or convert one into a pool directory",
        description="Pools for data.source: disk. PATH is a pool directory, an image folder "
        "(PATH/<class>/<image>) or an uncompressed .npz; `info` describes it, `convert` writes "
        "it as a pool directory (read as raw arrays: faster rounds than decoding images). "
        "PATH and OUT may be s3://bucket/prefix URLs (a pool directory's files under the "
        "prefix, or an .npz object); credentials and the endpoint come from AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL or ~/.aws.",
    )
    actions = p.add_subparsers(dest="pool_command", metavar="ACTION")
    actions.required = True
    info = actions.add_parser("info", help="rows, shape, format, classes and label counts",
                              description="Describe the pool at PATH.")  # fmt: skip
    info.add_argument("path", metavar="PATH",
                      help="a pool directory, image folder or .npz, or an s3:// URL")  # fmt: skip
    info.add_argument("--manifest", action="store_true",
                      help="also hash its content (what each round's commit versions)")  # fmt: skip
    convert = actions.add_parser(
        "convert", help="write PATH as a new pool directory OUT",
        description="Copy the rows, labels, ids and class names of PATH into a new pool "
        "directory OUT, a chunk at a time (ids checked first; OUT must be new or empty).",
    )  # fmt: skip
    convert.add_argument("path", metavar="PATH",
                         help="a pool directory, image folder or .npz, or an s3:// URL")
    convert.add_argument("out", metavar="OUT",
                         help="the new pool directory (new or empty), or an s3:// prefix")
    prune = actions.add_parser(
        "prune-staged", help="remove the pools staged for shard workers that no round uses",
        description="List the pools uploaded under STAGING/pools/ for workers that share "
        "nothing with the flow (scale.staging), and remove those no round has staged for "
        "--unused-days days (a pool with no record of use counts as unused). A round that "
        "needs a removed pool uploads it again.",
    )  # fmt: skip
    prune.add_argument("staging", metavar="STAGING",
                       help="the s3://bucket/prefix of scale.staging")  # fmt: skip
    prune.add_argument("--unused-days", type=float, default=7.0,
                       help="remove pools no round has staged for this many days "
                       "(default 7)")  # fmt: skip
    prune.add_argument("--dry-run", action="store_true",
                       help="only list what would be removed")  # fmt: skip


# ---------------------------------------------------------------------------- handlers
def cmd_pool(args: argparse.Namespace) -> int:
    from baldflow.common import printable
    from baldflow.data.object_store import block_cache, is_url
    from baldflow.data.pool_formats import manifest, open_pool
    from baldflow.data.row_pool import DiskPoolError

    try:
        if args.pool_command == "convert":
            return _convert_pool(args)
        if args.pool_command == "prune-staged":
            return _prune_staged(args)
        pool = open_pool(args.path)
        shape = list(pool.sample_shape)
        print(f"{args.path}: {type(pool).__name__}, {len(pool):,} rows of {shape} "
              f"{pool.dtype.name} (scale {pool.scale:g})")  # fmt: skip
        names = pool.class_names or []
        print(f"  classes ({len(names)}): " + ", ".join(printable(n) for n in names[:20])
              + (", ..." if len(names) > 20 else ""))  # fmt: skip
        counts: dict[int, int] = {}
        for start in range(0, len(pool), 1 << 20):  # streamed: flat memory for any pool
            values, found = pool.labels(start, min(len(pool), start + (1 << 20))).unique(
                return_counts=True
            )
            for value, count in zip(values.tolist(), found.tolist(), strict=True):
                counts[value] = counts.get(value, 0) + count
        unknown = counts.pop(-1, 0)
        shown = ", ".join(
            f"{printable(names[k]) if 0 <= k < len(names) else k}: {c:,}"
            for k, c in sorted(counts.items())
        )
        print(f"  labels: {shown or 'none'}; unknown (-1): {unknown:,}")
        if len(pool):
            print(f"  first id: {printable(pool.ids(0, 1)[0])}")
        if args.manifest:
            print(f"  content sha256: {manifest(pool)['sha256']}")
        if is_url(args.path):
            stats = block_cache().stats()
            print(f"  read from the object store: {stats['bytes_fetched']:,} bytes in "
                  f"{stats['requests']} requests")  # fmt: skip
        return 0
    except DiskPoolError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_ERROR


def _convert_pool(args: argparse.Namespace) -> int:
    import time

    from baldflow.data.convert import convert_pool

    began = time.perf_counter()
    last = [began]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= 2 or done == total:  # a line every 2 s, not one per chunk
            last[0] = now
            print(f"  {done:,} / {total:,} rows ({done / max(now - began, 1e-9):,.0f} rows/s)",
                  flush=True)  # fmt: skip

    pool = convert_pool(args.path, args.out, progress=progress)
    print(f"wrote {len(pool):,} rows to {args.out} in {time.perf_counter() - began:.1f} s; use "
          f"it as data.root/<pool|val|test>")  # fmt: skip
    return 0


def _prune_staged(args: argparse.Namespace) -> int:
    from baldflow.app import prune_staged_pools

    every, removed = prune_staged_pools(args.staging, args.unused_days, dry_run=args.dry_run)
    gone = {pool.location for pool in removed}
    verb = "would remove" if args.dry_run else "removed"
    for pool in every:
        used = pool.last_used.strftime("%Y-%m-%d %H:%M UTC") if pool.last_used else "no record"
        state = "" if pool.complete else ", incomplete"
        action = verb if pool.location in gone else "kept"
        print(f"  {pool.content}  last used {used}  {pool.bytes / 1e6:,.1f} MB{state}  {action}")
    freed = sum(pool.bytes for pool in removed)
    print(f"{len(every)} staged pools under {args.staging}; {verb} {len(removed)} "
          f"({freed / 1e6:,.1f} MB)")  # fmt: skip
    return 0


PARSERS = {"pool": add_pool}
COMMANDS = {"pool": cmd_pool}
