"""EPIG and annealed batches on a pool scored in shards are the batch of one process on the same
pool and seed, over seeds, modes and shard layouts (empty and one-sample shards included), as
`compute.sharding`'s local submit runs them: a loop over the shards, then the merge. The
model-level checks (a trained round's pool on disk) are in test_round_sharding.py and
test_strategy_contract.py; these are the selection maths on small random pools."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from helpers import random_log_probs

from baldflow.acquisition.annealed import (
    Annealed,
    annealed_select_by_id,
    annealed_shard_candidates,
    coldness_schedule,
    merge_annealed,
)
from baldflow.acquisition.epig import epig_score_function, epig_scores, target_ids
from baldflow.acquisition.picks import merge_summaries, summarise_shard
from baldflow.acquisition.selection import SelectionError
from baldflow.acquisition.sharded import sorted_pool_scores
from baldflow.acquisition.strategies import get_strategy
from baldflow.acquisition.strategy import Noise, SelectionInputs
from baldflow.config import check_sharding, validate

SEEDS = range(6)


def layout(n: int, seed: int) -> list[tuple[int, int]]:
    """Uneven shards tiling [0, n): an empty one, a one-sample one, the rest at random cuts."""
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(2, n), 3))
    bounds = [0, 0, 1, *cuts, n]
    return list(zip(bounds, bounds[1:], strict=False))


def pool(seed: int, n: int, ties: bool = False) -> tuple[torch.Tensor, list[str]]:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, generator=generator, dtype=torch.float64)
    if ties:  # many equal scores, some of them 0 (weight 0 under power)
        scores = (scores * 4).floor() / 4
    # Ids from user data are untrusted text: no order or format to lean on.
    ids = [f"{random.Random(seed * 1000 + i).random():.6f}/é\t{i}" for i in range(n)]
    return scores, ids


# -------------------------------------------------------------------------------------- EPIG
@pytest.mark.parametrize("mode", ["power", "softmax", "softrank", "topk"])
def test_sharded_epig_batch_is_the_in_process_batch(mode):
    for seed in SEEDS:
        n, batch = 90, 6
        log_probs = random_log_probs(n, 4, 3, seed=seed)
        ids = [f"sample-{seed}-{i}" for i in range(n)]
        rows = {sid: i for i, sid in enumerate(ids)}
        # The targets: chosen from the ids alone, predicted once, broadcast to every shard.
        targets = [rows[sid] for sid in target_ids(seed, ids, 10)]
        targets_T_K_C = log_probs[targets]
        whole = epig_scores(log_probs, targets_T_K_C)
        ranked = whole.sort().values if mode == "softrank" else None
        expected = merge_summaries(
            [summarise_shard(whole, ids, batch, mode, 1.0, seed, ranked)], batch, ranked
        )
        score = epig_score_function(targets_T_K_C)
        parts_scores = [(score(log_probs[a:b]), ids[a:b]) for a, b in layout(n, seed)]
        sorted_scores = sorted_pool_scores([s for s, _ in parts_scores])
        ranks = sorted_scores if mode == "softrank" else None
        parts = [summarise_shard(s, i, batch, mode, 1.0, seed, ranks) for s, i in parts_scores]
        got = merge_summaries(parts, batch, ranks)
        assert got.sample_ids == expected.sample_ids
        assert got.scores == expected.scores and got.keys == expected.keys


# ---------------------------------------------------------------------------------- annealed
def sharded_annealed(scores, ids, batch, mode, schedule, seed, bounds):
    ranks = sorted_pool_scores([scores]) if mode == "softrank" else None
    parts = [
        annealed_shard_candidates(scores[a:b], ids[a:b], batch, mode, schedule, seed, ranks)
        for a, b in bounds
    ]
    return parts


@pytest.mark.parametrize("mode", ["power", "softmax", "softrank"])
@pytest.mark.parametrize(
    "ends", [(8.0, 0.25), (1.0, 1.0), (0.0, 0.0), (math.inf, math.inf), (1e-3, 1e3)]
)
def test_sharded_annealed_batch_is_the_in_process_batch(mode, ends):
    for seed in SEEDS:
        n, batch = 50, 6
        scores, ids = pool(seed, n, ties=seed % 2 == 1)
        schedule = coldness_schedule(batch, *ends)
        expected = annealed_select_by_id(scores, ids, batch, mode, schedule, seed)
        parts = sharded_annealed(scores, ids, batch, mode, schedule, seed, layout(n, seed))
        got = merge_annealed(parts, batch)
        assert got.sample_ids == [ids[i] for i in expected.indices.tolist()]
        assert got.keys == expected.keys
        assert got.scores == scores[expected.indices].tolist()
        for a, b in zip(got.probabilities, expected.probabilities, strict=True):
            assert a == pytest.approx(b, rel=1e-9)


def test_annealed_strategy_selects_the_same_batch_from_shards_and_from_every_score():
    strategy = get_strategy("annealed-softrank-bald")
    assert isinstance(strategy, Annealed) and strategy.shardable
    params = {"coldness": 4.0, "coldness_end": 0.5, "batch_size": 5}
    for seed in SEEDS:
        scores, ids = pool(seed, 40)
        noise = Noise.of_round(seed)
        whole = strategy.select(SelectionInputs(sample_ids=ids, scores_N=scores), 5, params, noise)
        schedule = coldness_schedule(5, 4.0, 0.5)
        parts = sharded_annealed(scores, ids, 5, "softrank", schedule, noise.seed, layout(40, seed))
        got = strategy.select(SelectionInputs(summaries=parts), 5, params, noise)
        assert got.sample_ids == whole.sample_ids and got.keys == whole.keys
        assert got.scores == whole.scores.tolist()


def test_a_pool_shorter_than_the_batch_draws_with_the_shorter_schedule():
    scores, ids = pool(3, 4)
    schedule = coldness_schedule(6, 8.0, 0.25)
    parts = sharded_annealed(scores, ids, 6, "power", schedule, 3, [(0, 1), (1, 1), (1, 4)])
    got = merge_annealed(parts, 4)
    expected = annealed_select_by_id(
        scores, ids, 4, "power", coldness_schedule(4, 8.0, 0.25), 3
    )
    assert got.sample_ids == [ids[i] for i in expected.indices.tolist()]
    assert got.keys == expected.keys and got.probabilities == expected.probabilities


def test_parts_cut_under_different_rules_are_refused():
    scores, ids = pool(0, 20)
    one = annealed_shard_candidates(scores[:10], ids[:10], 3, "power", [4, 2, 1], seed=1)
    other = annealed_shard_candidates(scores[10:], ids[10:], 3, "power", [4, 2, 1], seed=2)
    with pytest.raises(SelectionError, match="different"):
        merge_annealed([one, other], 3)
    with pytest.raises(SelectionError, match="softrank needs pool_scores"):
        annealed_shard_candidates(scores, ids, 3, "softrank", [4, 2, 1])


# ------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("name", ["power-epig", "topk-epig", "annealed-power-bald"])
@pytest.mark.parametrize("where", [{"scale": {"runner": "dask"}}, {"data": {"source": "disk"}}])
def test_a_sharded_source_is_no_longer_refused(tiny_defaults, name, where):
    params = copy.deepcopy(tiny_defaults)  # a wider fixture's dict: never change it
    params["acquisition"] = {**params["acquisition"], "strategy": name}
    for section, values in where.items():
        params[section] = {**params.get(section, {}), **values}
    if "data" in where:  # a disk pool names its directory; never read here
        params["data"]["options"] = {"path": "pool"}
    config = validate(params, check_names=False)
    check_sharding(config)
    assert get_strategy(name).check(config.acquisition.model_dump(), sharded_by="x") == []
