"""Time of BADGE and CoreSet selection on a whole pool (one torch thread), next to BALD scoring.

Not part of the test run. Usage: `python benchmarks/badge_coreset.py [--n 10000] [--k 20]
[--batch 10] [--labeled 100] [--repeats 2]`. Two settings: 8x8 digits-like inputs with the mlp
and 28x28 inputs with the cnn (untrained weights: timings do not depend on them). Each reports
embed_pool (one streamed MC pass that also yields the features), the selection step on its own
(gradient embeddings + k-means++ seeding; greedy k-center against a labeled set), the totals,
and score_pool("bald") as the cost of a score-based round on the same pool.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from baldflow.acquisition.badge import badge, gradient_embeddings
from baldflow.acquisition.coreset import coreset
from baldflow.inference import embed_pool, score_pool
from baldflow.models import build_model


def best_time(fn, repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up: first calls pay for allocator growth and kernel selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def run_setting(name, model_name, input_shape, args) -> dict:
    model = build_model(model_name, input_shape, 10, seed=0)
    x = torch.rand(args.n, *input_shape, generator=torch.Generator().manual_seed(1))
    labeled_x = torch.rand(args.labeled, *input_shape, generator=torch.Generator().manual_seed(2))
    embed_s, (features_N_D, probs_N_C) = best_time(
        lambda: embed_pool(model, x, args.k, torch.Generator().manual_seed(3)), args.repeats
    )
    labeled_features = model.embed(labeled_x)
    grad_s, embeddings_N_E = best_time(
        lambda: gradient_embeddings(features_N_D, probs_N_C), args.repeats
    )
    seed_s, _ = best_time(
        lambda: badge(embeddings_N_E, args.batch, torch.Generator().manual_seed(4)), args.repeats
    )
    coreset_s, _ = best_time(
        lambda: coreset(features_N_D, args.batch, labeled_features), args.repeats
    )
    bald_s, _ = best_time(
        lambda: score_pool(model, x, "bald", args.k, torch.Generator().manual_seed(3)),
        args.repeats,
    )
    return {
        "setting": name,
        "n": args.n,
        "k": args.k,
        "batch": args.batch,
        "labeled": args.labeled,
        "feature_dim": features_N_D.shape[1],
        "badge_embedding_dim": embeddings_N_E.shape[1],
        "embed_pool_s": round(embed_s, 3),
        "gradient_embeddings_s": round(grad_s, 3),
        "badge_seeding_s": round(seed_s, 3),
        "coreset_s": round(coreset_s, 3),
        "total_badge_s": round(embed_s + grad_s + seed_s, 3),
        "total_coreset_s": round(embed_s + coreset_s, 3),
        "score_pool_bald_s": round(bald_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--labeled", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, model_name, shape in (
        ("digits-8x8-mlp", "mlp", (1, 8, 8)),
        ("28x28-cnn", "cnn", (1, 28, 28)),
    ):
        print(json.dumps(run_setting(name, model_name, shape, args)), flush=True)


if __name__ == "__main__":
    main()
