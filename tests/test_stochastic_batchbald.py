"""Stochastic BatchBALD: greedy unchanged, the law of each sampled step, the id-keyed contract."""

import itertools
import math
import random

import pytest
import torch

from baldflow.acquisition.batchbald import batchbald


def log_probs(seed, N=40, K=8, C=4):
    generator = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(N, K, C, generator=generator, dtype=torch.float64) * 2, -1)


def joint_mi(lp, indices) -> float:
    """I[y_S; w] by enumerating every label configuration of S."""
    probs = lp.exp()[list(indices)]
    n, K, C = probs.shape
    joint = 0.0
    for config in itertools.product(range(C), repeat=n):
        per_sample = torch.ones(K, dtype=torch.float64)
        for i, c in enumerate(config):
            per_sample = per_sample * probs[i, :, c]
        p = per_sample.mean().item()
        joint -= p * math.log(p) if p > 0 else 0.0
    return joint + torch.special.xlogy(probs, probs).sum((0, 2)).mean().item()


def brute_force_law(lp, batch, mode, beta):
    """P(ordered batch): step i samples from weights w(gain | earlier picks)."""
    N = len(lp)

    def weight(gain):
        if mode == "power":
            return gain**beta if gain > 0 else 0.0
        return math.exp(beta * gain)

    law = {}
    for picks in itertools.permutations(range(N), batch):
        p = 1.0
        for step in range(batch):
            before = joint_mi(lp, picks[:step]) if step else 0.0
            weights = {
                j: weight(joint_mi(lp, [*picks[:step], j]) - before)
                for j in range(N)
                if j not in picks[:step]
            }
            p *= weights[picks[step]] / sum(weights.values())
        law[picks] = p
    return law


# Recorded from batchbald before the stochastic option existed: greedy must not change.
GREEDY_BEFORE = [
    ((0, 6, 10_000, True), [23, 38, 7, 14, 6, 5], 6),
    ((1, 8, 200, True), [21, 2, 28, 20, 36, 0, 27, 13], 4),
    ((2, 5, 50, False), [22, 3, 19, 17, 9], 3),
    ((3, 7, 10_000, False), [33, 39, 38, 35, 5, 34, 14], 7),
]


@pytest.mark.parametrize("case, indices, exact_steps", GREEDY_BEFORE)
def test_mode_none_is_the_greedy_batchbald_of_before(case, indices, exact_steps):
    seed, batch, num_samples, lazy = case
    got = batchbald(
        log_probs(seed),
        batch,
        num_samples=num_samples,
        generator=torch.Generator().manual_seed(seed),
        lazy=lazy,
        return_details=True,
    )
    assert got.indices.tolist() == indices and got.exact_steps == exact_steps
    assert got.probabilities is None


@pytest.mark.parametrize("mode", ["power", "softmax"])
@pytest.mark.parametrize("coldness", [math.inf, 1e9])
@pytest.mark.parametrize("lazy", [True, False])
def test_infinite_coldness_is_batchbald(mode, coldness, lazy):
    for seed in range(3):
        lp = log_probs(seed, N=30)
        greedy = batchbald(lp, 5, lazy=lazy, generator=torch.Generator().manual_seed(0))
        ids = [f"x{i}" for i in range(30)]
        cold = batchbald(lp, 5, lazy=lazy, mode=mode, coldness=coldness, sample_ids=ids, seed=seed)
        assert cold.tolist() == greedy.tolist()
        cold_generator = batchbald(
            lp, 5, lazy=lazy, mode=mode, coldness=coldness, generator=torch.Generator()
        )
        assert cold_generator.tolist() == greedy.tolist()


@pytest.mark.parametrize("mode, beta", [("power", 1.0), ("softmax", 4.0)])
def test_sampled_batches_follow_the_sequential_law(mode, beta):
    lp = log_probs(7, N=5, K=6, C=3)
    law = brute_force_law(lp, 2, mode, beta)
    ids = list("abcde")
    runs = 2000
    counts: dict = {}
    for seed in range(runs):
        picks = tuple(
            batchbald(lp, 2, mode=mode, coldness=beta, sample_ids=ids, seed=seed).tolist()
        )
        counts[picks] = counts.get(picks, 0) + 1
    chi2 = sum((counts.get(k, 0) - runs * p) ** 2 / (runs * p) for k, p in law.items())
    assert chi2 < 50.80  # chi-square, 19 degrees of freedom, p = 1e-4
    # The test can tell the greedy batch (or a different coldness) apart from the law.
    assert max(counts.values()) < 0.9 * runs


def test_reported_probabilities_and_gains_match_brute_force():
    lp = log_probs(3, N=6, K=5, C=3)
    picked = batchbald(
        lp,
        3,
        mode="power",
        coldness=2.0,
        lazy=False,
        return_details=True,
        generator=torch.Generator().manual_seed(1),
    )
    picks = picked.indices.tolist()
    for step in range(3):
        before = joint_mi(lp, picks[:step]) if step else 0.0
        gains = {
            j: joint_mi(lp, [*picks[:step], j]) - before for j in range(6) if j not in picks[:step]
        }
        weights = {j: max(g, 0.0) ** 2 if g > 0 else 0.0 for j, g in gains.items()}
        want = weights[picks[step]] / sum(weights.values())
        assert picked.probabilities[step].item() == pytest.approx(want, rel=1e-6)
        assert picked.gains[step].item() == pytest.approx(gains[picks[step]], abs=1e-9)


def test_lazy_and_plain_draw_the_same_batch():
    lp = log_probs(11, N=60, K=10, C=3)
    ids = [f"id-{i}" for i in range(60)]
    for seed, (mode, beta) in itertools.product(range(4), [("power", 1.0), ("softmax", 8.0)]):
        kwargs = dict(mode=mode, coldness=beta, sample_ids=ids, seed=seed, return_details=True)
        lazy = batchbald(lp, 4, lazy=True, **kwargs)
        plain = batchbald(lp, 4, lazy=False, **kwargs)
        assert lazy.indices.tolist() == plain.indices.tolist()
        assert lazy.gains == pytest.approx(plain.gains, abs=1e-9)
        assert not math.isnan(lazy.probabilities[0]) and not plain.probabilities.isnan().any()


def test_same_seed_same_batch_and_pool_order_does_not_matter():
    lp = log_probs(5, N=50, K=8, C=4)
    ids = [f"sample-{i}" for i in range(50)]
    for num_samples in (10_000, 64):  # exact joint entropies, then sampled after two picks
        kwargs = dict(mode="power", coldness=1.0, num_samples=num_samples, seed=9)
        one = batchbald(lp, 5, sample_ids=ids, **kwargs).tolist()
        assert batchbald(lp, 5, sample_ids=ids, **kwargs).tolist() == one
        order = list(range(50))
        random.Random(0).shuffle(order)
        permuted = batchbald(lp[order], 5, sample_ids=[ids[i] for i in order], **kwargs)
        assert [order[i] for i in permuted.tolist()] == one
        other = batchbald(lp, 5, sample_ids=ids, **{**kwargs, "seed": 10}).tolist()
        assert other != one
    generator_one = batchbald(lp, 5, mode="softmax", generator=torch.Generator().manual_seed(3))
    generator_two = batchbald(lp, 5, mode="softmax", generator=torch.Generator().manual_seed(3))
    assert generator_one.tolist() == generator_two.tolist()


def test_power_never_samples_a_point_without_gain_while_others_have_some():
    lp = log_probs(2, N=12, K=6, C=3)
    lp[6:] = lp[6:, :1].expand(-1, 6, -1)  # every model sample agrees: BALD and all gains 0
    ids = [f"p{i}" for i in range(12)]
    for seed in range(30):
        picked = batchbald(lp, 3, mode="power", coldness=0.5, sample_ids=ids, seed=seed)
        assert all(i < 6 for i in picked.tolist())
    uniform = batchbald(
        lp, 3, mode="softmax", coldness=0.0, lazy=False, sample_ids=ids, seed=0, return_details=True
    )
    assert uniform.probabilities.tolist() == pytest.approx([1 / 12, 1 / 11, 1 / 10])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "topk"}, "unknown stochastic BatchBALD mode"),
        ({"mode": "power", "sample_ids": [f"{i}" for i in range(10)]}, "need a seed"),
        ({"coldness": 2.0}, "only to stochastic"),
        ({"sample_ids": [f"{i}" for i in range(10)], "seed": 0}, "only to stochastic"),
        ({"mode": "power", "coldness": -1.0}, "coldness"),
        ({"mode": "power", "coldness": math.nan}, "coldness"),
        ({"mode": "power", "seed": 0, "sample_ids": ["a"] * 10}, "unique"),
        ({"mode": "power", "seed": 0, "sample_ids": ["a", "b"]}, "one id per pool point"),
        ({"mode": "power", "seed": "zero"}, "seed"),
    ],
)
def test_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        batchbald(log_probs(0, N=10), 2, **kwargs)
