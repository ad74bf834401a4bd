"""CoreSet and BADGE in shards (baldflow.acquisition.diverse_shards) against the one process.

Not part of the test run. Usage:

    python benchmarks/diverse_shards.py                      # N=20000, D=64, 10 clusters
    python benchmarks/diverse_shards.py --features pool.npy  # rows of a saved N x D array

The pool is split into equal contiguous shards. CoreSet: for every shard count, batch b and
candidates m = factor * b, the passes over the shards until every pick is certified, with and
without a labeled set, with the top-m proposals alone and with each shard's local greedy
sequence too, and whether all four batches equal `coreset` on the whole pool (they must).
BADGE: gradient embeddings from the features and a fixed random linear head (C classes, so
E = C * D); per seed, `badge` on the whole pool against the shards' merge (same round seed),
the k-means++ potential ratio sharded / in-process (mean, min, max over the seeds; > 1 is a
worse cover) and the overlap of the two batches (shared picks / b, mean over the seeds). The
row "1 proc, other seed" is the yardstick: `badge` on the whole pool under another seed
against the same reference, i.e. what the randomness of D^2 sampling alone gives.
A shard's candidates for a smaller m are the prefix of those for a larger one (k-means++ seeds
one pick at a time from the same stream), so each shard is seeded once per seed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from baldflow.acquisition.badge import badge, gradient_embeddings
from baldflow.acquisition.coreset import coreset
from baldflow.acquisition.diverse_shards import (
    BadgeProposal,
    badge_shard_proposal,
    coreset_in_shards,
    coreset_shard_proposal,
    kmeans_potential,
    merge_badge_proposals,
)


def clustered_features(n: int, dim: int, clusters: int, seed: int) -> torch.Tensor:
    """n rows of a mixture of `clusters` unit Gaussians in `dim` dimensions, centers N(0, 9 I)."""
    generator = torch.Generator().manual_seed(seed)
    centers = 3.0 * torch.randn(clusters, dim, generator=generator)
    which = torch.randint(0, clusters, (n,), generator=generator)
    return centers[which] + torch.randn(n, dim, generator=generator)


def layout(n: int, shards: int) -> list[tuple[int, int]]:
    bounds = [round(i * n / shards) for i in range(shards + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def coreset_rows(pool_N_D, labeled_L_D, args) -> None:
    print("\nCoreSet: passes until every pick is certified; top m: the shard sends its top m "
          "rows, +greedy: also its own greedy sequence of m (local_greedy=True)")  # fmt: skip
    print(f"{'':>16} | {f'labeled rows: {labeled_L_D.shape[0]}':>16} | {'no labeled rows':>16} |")
    print(f"{'shards':>6} {'b':>4} {'m':>4} | {'top m':>7} {'+greedy':>8} | {'top m':>7} "
          f"{'+greedy':>8} | {'same':>4} {'seconds':>7}")  # fmt: skip
    all_same = True
    for batch in args.batches:
        expected = {
            True: coreset(pool_N_D, batch, labeled_L_D).tolist(),
            False: coreset(pool_N_D, batch).tolist(),
        }
        for shards in args.shards:
            parts = [(pool_N_D[a:z], torch.arange(a, z)) for a, z in layout(len(pool_N_D), shards)]
            for factor in args.factors:
                started = time.perf_counter()
                passes, same = [], True
                for labeled in (True, False):
                    given = labeled_L_D if labeled else None

                    def propose(request, given=given, parts=parts):
                        return [coreset_shard_proposal(f, p, given, request) for f, p in parts]

                    for local_greedy in (False, True):
                        result = coreset_in_shards(
                            propose, batch, factor * batch, None, local_greedy
                        )
                        same &= result.certified and result.positions.tolist() == expected[labeled]
                        passes.append(result.passes)
                all_same &= same
                seconds = time.perf_counter() - started
                print(f"{shards:>6} {batch:>4} {factor * batch:>4} | {passes[0]:>7} "
                      f"{passes[1]:>8} | {passes[2]:>7} {passes[3]:>8} | "
                      f"{'yes' if same else 'NO':>4} {seconds:>7.1f}")  # fmt: skip
    print(f"every sharded CoreSet batch identical to coreset(): {'yes' if all_same else 'NO'}")


def badge_rows(pool_N_D, args) -> None:
    generator = torch.Generator().manual_seed(args.seed + 1)
    head_D_C = torch.randn(pool_N_D.shape[1], args.classes, generator=generator)
    logits_N_C = pool_N_D @ head_D_C / pool_N_D.shape[1] ** 0.5
    embeddings_N_E = gradient_embeddings(pool_N_D, torch.softmax(logits_N_C, dim=1))
    n, e = embeddings_N_E.shape
    print(f"\nBADGE: gradient embeddings {n} x {e}, {args.seeds} seeds")
    largest_m = max(args.batches) * max(args.factors)
    # results[(shards, b, m)] = list of (potential ratio, overlap) over the seeds; shards 0:
    # the one process with another seed (what the randomness of D^2 sampling alone gives).
    results: dict[tuple[int, int, int], list[tuple[float, float]]] = {}
    started = time.perf_counter()
    for seed in range(args.seeds):
        reference = {}
        for batch in args.batches:
            rows = badge(embeddings_N_E, batch, torch.Generator().manual_seed(seed))
            reference[batch] = (set(rows.tolist()), kmeans_potential(embeddings_N_E, rows))
            # The yardstick: the one process under another round seed, against this one.
            other = badge(embeddings_N_E, batch, torch.Generator().manual_seed(seed + 10**6))
            ratio = kmeans_potential(embeddings_N_E, other) / reference[batch][1]
            overlap = len(reference[batch][0] & set(other.tolist())) / batch
            results.setdefault((0, batch, 0), []).append((ratio, overlap))
        for shards in args.shards:
            proposals = [
                badge_shard_proposal(embeddings_N_E[a:z], torch.arange(a, z), largest_m, seed)
                for a, z in layout(n, shards)
            ]
            for batch in args.batches:
                for factor in args.factors:
                    m = factor * batch
                    prefix = [BadgeProposal(p.positions_m[:m], p.embeddings_m_E[:m], p.count)
                              for p in proposals]  # fmt: skip
                    merged = merge_badge_proposals(
                        prefix, batch, torch.Generator().manual_seed(seed)
                    )
                    rows_set, potential = reference[batch]
                    ratio = kmeans_potential(embeddings_N_E, merged.positions) / potential
                    overlap = len(rows_set & set(merged.positions.tolist())) / batch
                    results.setdefault((shards, batch, m), []).append((ratio, overlap))
    seconds = time.perf_counter() - started
    print(f"{'shards':>6} {'b':>4} {'m':>4} | {'potential ratio mean':>20} {'min':>6} "
          f"{'max':>6} | {'overlap':>7}")  # fmt: skip
    for (shards, batch, m), values in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0])):
        ratios = [ratio for ratio, _ in values]
        overlap = statistics.fmean(o for _, o in values)
        label = f"{shards:>6} {batch:>4} {m:>4}" if shards else f"{'1 proc, other seed':>16}"
        print(f"{label} | {statistics.fmean(ratios):>20.4f} "
              f"{min(ratios):>6.3f} {max(ratios):>6.3f} | {overlap:>7.2f}")  # fmt: skip
    print(f"BADGE section: {seconds:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=20000, help="synthetic pool rows")
    parser.add_argument("--dim", type=int, default=64, help="synthetic feature dimensions D")
    parser.add_argument("--clusters", type=int, default=10, help="synthetic Gaussian clusters")
    parser.add_argument(
        "--features", default=None,
        help="a .npy N x D array of features to use instead of the synthetic pool",
    )  # fmt: skip
    parser.add_argument(
        "--labeled", type=int, default=100,
        help="labeled rows for CoreSet: drawn from the same mixture (with --features: the "
        "file's first rows, the pool being the rest)",
    )  # fmt: skip
    parser.add_argument("--classes", type=int, default=10, help="BADGE head classes C (E = C*D)")
    parser.add_argument("--batches", type=int, nargs="+", default=[10, 100], help="batch sizes b")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 4, 16], help="shard counts")
    parser.add_argument(
        "--factors", type=int, nargs="+", default=[1, 2, 4], help="candidates m = factor * b"
    )
    parser.add_argument("--seeds", type=int, default=10, help="BADGE seeds (0 .. seeds-1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--skip-coreset", action="store_true", help="only the BADGE table")
    parser.add_argument("--skip-badge", action="store_true", help="only the CoreSet table")
    args = parser.parse_args()

    if args.features:
        rows = torch.from_numpy(np.load(args.features)).float()
        if rows.ndim != 2 or rows.shape[0] <= args.labeled:
            raise SystemExit(f"{args.features}: need an N x D array with N > --labeled")
        labeled_L_D, pool_N_D = rows[: args.labeled], rows[args.labeled :]
        source = args.features
    else:
        rows = clustered_features(args.n + args.labeled, args.dim, args.clusters, args.seed)
        labeled_L_D, pool_N_D = rows[: args.labeled], rows[args.labeled :]
        source = f"synthetic: {args.clusters} clusters"
    print(f"pool {pool_N_D.shape[0]} x {pool_N_D.shape[1]} ({source}), torch threads "
          f"{torch.get_num_threads()}")  # fmt: skip
    if not args.skip_coreset:
        coreset_rows(pool_N_D, labeled_L_D, args)
    if not args.skip_badge:
        badge_rows(pool_N_D, args)


if __name__ == "__main__":
    main()
