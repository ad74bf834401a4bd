"""Sharded selection: the merged shard candidates are the single-process batch, for every mode."""

import hashlib
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from baldflow.acquisition import selection
from baldflow.acquisition.selection import MODES, SelectionError
from baldflow.acquisition.sharded import (
    Candidates,
    hash_to_gumbel,
    id_gumbel,
    merge_candidates,
    select_by_id,
    shard_candidates,
    sorted_pool_scores,
)

COLDNESSES = (0.0, 0.5, 1.0, 2.0, math.inf)
# Few distinct values, so ties are common; zeros and negatives have weight 0 under power.
SCORE_VALUES = (-1.0, -0.0, 0.0, 1e-3, 0.1, 0.25, 0.5, 0.5, 2.0, 3.0)


def sharded(scores, ids, cuts, batch_size, mode, coldness, seed):
    """Split the pool at `cuts` (sorted, may repeat: empty shards), cut each, merge."""
    bounds = [0, *cuts, len(ids)]
    parts = [(scores[a:b], ids[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    pool = sorted_pool_scores([part for part, _ in parts])
    candidates = [
        shard_candidates(s, i, batch_size, mode, coldness, seed, pool_scores=pool) for s, i in parts
    ]
    assert all(len(c) <= batch_size for c in candidates)
    return merge_candidates(candidates, batch_size)


@st.composite
def pools(draw):
    n = draw(st.integers(0, 30))
    scores = torch.tensor(draw(st.lists(st.sampled_from(SCORE_VALUES), min_size=n, max_size=n)))
    # Ids that are not in string order of their position, with a repetition-style suffix.
    ids = [f"{7 * i % 31}~r{i % 3}" if i % 4 == 0 else str(7 * i % 31) for i in range(n)]
    shards = draw(st.integers(1, 7))
    cuts = sorted(draw(st.lists(st.integers(0, n), min_size=shards - 1, max_size=shards - 1)))
    return scores.to(torch.float64), ids, cuts


@settings(max_examples=300, deadline=None)
@given(
    pool=pools(),
    batch_size=st.integers(1, 35),
    mode=st.sampled_from(MODES),
    coldness=st.sampled_from(COLDNESSES),
    seed=st.integers(0, 2**64),
)
def test_sharded_is_the_single_process_batch(pool, batch_size, mode, coldness, seed):
    scores, ids, cuts = pool
    expected = select_by_id(scores, ids, batch_size, mode, coldness, seed)
    assert len(expected) == min(batch_size, len(ids)) == len(set(expected))
    assert sharded(scores, ids, cuts, batch_size, mode, coldness, seed) == expected


@settings(max_examples=150, deadline=None)
@given(
    pool=pools(),
    batch_size=st.integers(1, 35),
    mode=st.sampled_from(MODES),
    coldness=st.sampled_from(COLDNESSES),
    permutation_seed=st.integers(0, 1000),
)
def test_a_permuted_pool_gives_the_same_ids(pool, batch_size, mode, coldness, permutation_seed):
    scores, ids, _ = pool
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(permutation_seed))
    permuted = [ids[i] for i in order.tolist()]
    expected = select_by_id(scores, ids, batch_size, mode, coldness, 5)
    assert select_by_id(scores[order], permuted, batch_size, mode, coldness, 5) == expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("coldness", COLDNESSES)
@pytest.mark.parametrize("shards", range(1, 8))
def test_every_mode_coldness_and_shard_count_on_a_larger_pool(mode, coldness, shards):
    generator = torch.Generator().manual_seed(shards)
    scores = torch.randint(-3, 40, (500,), generator=generator).to(torch.float64) / 10
    ids = [f"img-{i * 7919 % 1000}" for i in range(500)]
    # Uneven shards, one of them empty and one smaller than the batch.
    cuts = sorted({0, 3, *torch.randint(0, 500, (shards,), generator=generator).tolist()})
    cuts = cuts[: shards - 1]
    for batch_size in (1, 10, 64):
        expected = select_by_id(scores, ids, batch_size, mode, coldness, seed=shards)
        assert sharded(scores, ids, cuts, batch_size, mode, coldness, shards) == expected


# --------------------------------------------------- the same semantics as selection.select
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("coldness", (*COLDNESSES, 1e308))
def test_agrees_with_select_given_the_same_noise(monkeypatch, mode, coldness):
    # Ids in string order of their position make select's "lower index" tie rule the same as
    # the "smaller id" rule here, so with select fed the id noise the batches must be equal.
    scores = torch.tensor([0.5, 0.0, 0.25, -1.0, 0.5, 0.25, 0.0, 2.0, 0.5, 0.1] * 5)
    ids = [f"{i:03d}" for i in range(scores.numel())]
    for seed in range(10):
        noise = id_gumbel(seed, ids)
        monkeypatch.setattr(selection, "standard_gumbel", lambda n, generator, noise=noise: noise)
        for batch_size in (1, 7, 50, 60):
            expected = selection.select(scores, batch_size, mode, coldness).tolist()
            picked = select_by_id(scores, ids, batch_size, mode, coldness, seed)
            assert picked == [ids[i] for i in expected]


def test_topk_ties_go_to_the_smaller_id_wherever_it_lies():
    scores = torch.tensor([0.5, 0.7, 0.5, 0.7, 0.5])
    assert select_by_id(scores, ["e", "d", "c", "b", "a"], 3, "topk") == ["b", "d", "a"]


def test_power_takes_nonpositive_scores_only_after_all_positive_ones():
    scores = torch.tensor([0.0, 0.3, -1.0, 0.2, 0.0, 0.1])
    ids = list("abcdef")
    fills = set()
    for seed in range(100):
        picked = select_by_id(scores, ids, 5, "power", 1.0, seed)
        assert set(picked[:3]) == {"b", "d", "f"}
        fills.add(tuple(picked[3:]))
    assert {x for fill in fills for x in fill} == {"a", "c", "e"}


def test_batch_larger_than_the_pool_takes_the_pool():
    scores, ids = torch.tensor([0.1, 0.2]), ["x", "y"]
    assert sorted(select_by_id(scores, ids, 5, "softmax")) == ["x", "y"]
    assert sharded(scores, ids, [1, 1], 5, "softmax", 1.0, 0) == select_by_id(
        scores, ids, 5, "softmax"
    )
    assert select_by_id(torch.empty(0), [], 3, "power") == []
    assert merge_candidates([], 3) == []


# ------------------------------------------------------------------------------- the law
SEEDS = 3_000


def first_pick_frequencies(scores, mode):
    ids = [str(i) for i in range(len(scores))]
    counts = torch.zeros(len(scores))
    for seed in range(SEEDS):
        counts[int(select_by_id(torch.tensor(scores), ids, 1, mode, 1.0, seed)[0])] += 1
    return counts / SEEDS


def assert_frequencies(observed, expected):
    expected = torch.tensor(expected, dtype=torch.float32)
    tolerance = 4 * torch.sqrt(expected * (1 - expected) / SEEDS)
    assert ((observed - expected).abs() <= tolerance).all(), (observed, expected)


def test_power_first_pick_is_proportional_to_the_score():
    assert_frequencies(first_pick_frequencies([0.5, 0.25, 0.25], "power"), [0.5, 0.25, 0.25])


def test_softmax_first_pick_follows_exp_of_the_score():
    weights = [math.exp(s) for s in (1.0, 0.0, -1.0)]
    expected = [w / sum(weights) for w in weights]
    assert_frequencies(first_pick_frequencies([1.0, 0.0, -1.0], "softmax"), expected)


def test_softrank_first_pick_follows_inverse_rank():
    assert_frequencies(
        first_pick_frequencies([3.0, 2.0, 1.0], "softrank"), [6 / 11, 3 / 11, 2 / 11]
    )


# ------------------------------------------------------------------------------- the noise
def test_noise_is_the_documented_hash_formula():
    for seed, sample_id in [(0, "0"), (123, "123~r2"), (2**64 + 5, "héllo")]:
        digest = hashlib.blake2b(
            sample_id.encode(), key=seed.to_bytes(16, "little"), digest_size=8
        ).digest()
        k = int.from_bytes(digest, "little") >> 11
        u = (k + 0.5) / 2**53
        expected = -math.log(-math.log(u))
        assert id_gumbel(seed, [sample_id]).item() == pytest.approx(expected, rel=1e-12)


def test_noise_does_not_depend_on_order_or_company():
    ids = [str(i) for i in range(100)]
    noise = id_gumbel(7, ids)
    assert torch.equal(id_gumbel(7, ids[::-1]), noise.flip(0))
    assert torch.equal(id_gumbel(7, ids[40:41]), noise[40:41])
    assert not torch.equal(id_gumbel(8, ids), noise)


def test_uniform_is_never_0_or_1():
    extremes = np.array([0, 2**11 - 1, 2**63, 2**64 - 1], dtype=np.uint64)
    assert np.isfinite(hash_to_gumbel(extremes)).all()


def test_noise_is_standard_gumbel():
    noise = id_gumbel(1, [str(i) for i in range(200_000)])
    assert noise.dtype == torch.float64
    assert abs(noise.mean().item() - 0.5772156649) < 0.01
    assert abs(noise.std().item() - math.pi / math.sqrt(6)) < 0.01


def test_noise_is_identical_in_another_process():
    ids = [str(i) for i in range(50)] + ["123~r2"]
    code = (
        "from baldflow.acquisition.sharded import id_gumbel\n"
        f"print([v.hex() for v in id_gumbel(99, {ids!r}).tolist()])"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == str([v.hex() for v in id_gumbel(99, ids).tolist()])


# ------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: select_by_id([0.1, 0.2], ["a", "a"], 1), "sample_ids must be unique.*'a'"),
        (lambda: select_by_id([0.1, 0.2], ["a"], 1), "one id per score: 1 ids for 2"),
        (lambda: select_by_id([0.1], [1], 1), "sample_ids must be strings.*index 0"),
        (lambda: select_by_id([0.1], "a", 1), "single string"),
        (lambda: select_by_id([math.nan], ["a"], 1), "scores must be finite"),
        (lambda: select_by_id([0.1], ["a"], 0), "batch_size must be >= 1, got 0"),
        (lambda: select_by_id([0.1], ["a"], 1, "gready"), "valid modes"),
        (lambda: select_by_id([0.1], ["a"], 1, coldness=-1), "coldness"),
        (lambda: select_by_id([0.1], ["a"], 1, seed=-1), "seed must be in"),
        (lambda: select_by_id([0.1], ["a"], 1, seed=1.5), "seed must be an integer"),
        (lambda: shard_candidates([0.1], ["a"], 1, "softrank"), "pool_scores is required"),
        (
            lambda: shard_candidates([0.1], ["a"], 1, "softrank", pool_scores=[0.2, 0.1]),
            "sorted ascending",
        ),
        (lambda: merge_candidates([], 0), "batch_size"),
        (lambda: merge_candidates(["a"], 1), r"parts\[0\] must be Candidates"),
    ],
)
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(SelectionError, match=message):
        call()


def test_merge_refuses_mixed_rules_and_shared_ids():
    a = shard_candidates([0.1], ["a"], 1, "power", 1.0, seed=1)
    b = shard_candidates([0.2], ["b"], 1, "power", 1.0, seed=2)
    with pytest.raises(SelectionError, match="different"):
        merge_candidates([a, b], 1)
    with pytest.raises(SelectionError, match="share sample ids"):
        merge_candidates([a, a], 1)
    assert isinstance(a, Candidates) and a.ids == ["a"]
