"""Annealed stochastic batches: the schedule, the law of the picks, and the id-keyed contract."""

import itertools
import math
import random

import pytest
import torch

from baldflow.acquisition.annealed import annealed_select_by_id, coldness_schedule
from baldflow.acquisition.selection import SelectionError

# Chi-square critical values at p = 1e-4 (scipy.stats.chi2.isf(1e-4, df)); the runs below use
# fixed seeds, so each test is deterministic, and a wrong law fails it by a wide margin.
CHI2_CRITICAL_1E4 = {11: 37.37, 19: 50.80}


def chi_square(counts: dict, law: dict, runs: int) -> float:
    return sum((counts.get(k, 0) - runs * p) ** 2 / (runs * p) for k, p in law.items())


def sequential_law(log_weights, schedule):
    """P(ordered picks) when pick i draws from softmax(beta_i log w) over the remaining points."""
    n = len(log_weights)
    law = {}
    for picks in itertools.permutations(range(n), len(schedule)):
        p, remaining = 1.0, list(range(n))
        for pick, beta in zip(picks, schedule, strict=True):
            weights = [math.exp(beta * log_weights[j]) for j in remaining]
            p *= math.exp(beta * log_weights[pick]) / sum(weights)
            remaining.remove(pick)
        law[picks] = p
    return law


def frequencies(scores, ids, batch, mode, schedule, runs):
    counts: dict = {}
    for seed in range(runs):
        picks = tuple(annealed_select_by_id(scores, ids, batch, mode, schedule, seed)[0].tolist())
        counts[picks] = counts.get(picks, 0) + 1
    return counts


# ----------------------------------------------------------------------------- the schedule
def test_schedule_is_geometric_with_exact_endpoints():
    schedule = coldness_schedule(5, 16.0, 1.0)
    assert schedule[0] == 16.0 and schedule[-1] == 1.0
    assert schedule == pytest.approx([16, 8, 4, 2, 1])
    ratios = [b / a for a, b in itertools.pairwise(coldness_schedule(7, 0.25, 8))]
    assert ratios == pytest.approx([ratios[0]] * 6)


def test_schedule_edge_cases():
    assert coldness_schedule(1, 8, 1) == [8.0]
    assert coldness_schedule(3, 2, 2) == [2.0, 2.0, 2.0]
    assert coldness_schedule(2, 0, 0) == [0.0, 0.0]
    assert coldness_schedule(2, math.inf, math.inf) == [math.inf, math.inf]
    assert coldness_schedule(1, math.inf, 0) == [math.inf]


@pytest.mark.parametrize(
    "args, message",
    [
        ((3, 0, 1), "geometric"),
        ((3, 4, math.inf), "geometric"),
        ((3, -1, 1), "start"),
        ((3, 1, math.nan), "end"),
        ((0, 1, 1), "batch_size"),
        ((2.0, 1, 1), "batch_size"),
        ((2, "hot", 1), "start"),
    ],
)
def test_schedule_refuses_bad_input(args, message):
    with pytest.raises(SelectionError, match=message):
        coldness_schedule(*args)


# ------------------------------------------------------------------------------- the law
def test_constant_schedule_has_the_gumbel_top_k_law():
    scores = torch.tensor([0.1, 0.4, 0.2, 0.8], dtype=torch.float64)
    ids = ["a", "b", "c", "d"]
    runs = 3000
    counts = frequencies(scores, ids, 2, "power", [1.0, 1.0], runs)
    law = sequential_law([math.log(s) for s in scores.tolist()], [1.0, 1.0])
    assert chi_square(counts, law, runs) < CHI2_CRITICAL_1E4[11]


def test_annealed_schedule_has_the_per_pick_law():
    scores = torch.tensor([0.5, 1.0, 2.0, 3.0, 0.0], dtype=torch.float64)
    ids = [f"id{i}" for i in range(5)]
    schedule = [3.0, 0.3]
    runs = 3000
    counts = frequencies(scores, ids, 2, "softmax", schedule, runs)
    law = sequential_law(scores.tolist(), schedule)
    assert chi_square(counts, law, runs) < CHI2_CRITICAL_1E4[19]
    # And the reverse (cooling) schedule is a different law, which the test can tell apart.
    reverse_law = sequential_law(scores.tolist(), schedule[::-1])
    assert chi_square(counts, reverse_law, runs) > 10 * CHI2_CRITICAL_1E4[19]


def test_reported_probabilities_are_the_conditional_pick_probabilities():
    scores = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.7], dtype=torch.float64)
    ids = list("vwxyz")
    schedule = coldness_schedule(3, 4.0, 0.5)
    picked = annealed_select_by_id(scores, ids, 3, "power", schedule, seed=11)
    remaining = list(range(5))
    for pick, beta, probability in zip(
        picked.indices.tolist(), schedule, picked.probabilities, strict=True
    ):
        weights = [scores[j].item() ** beta for j in remaining]
        assert probability == pytest.approx(scores[pick].item() ** beta / sum(weights), rel=1e-12)
        remaining.remove(pick)


def test_softrank_uses_the_rank_in_the_whole_pool():
    scores = torch.tensor([5.0, 1.0, 3.0, 4.0, 2.0], dtype=torch.float64)
    ids = list("abcde")
    picked = annealed_select_by_id(scores, ids, 2, "softrank", [2.0, 2.0], seed=3)
    ranks = {0: 1, 3: 2, 2: 3, 4: 4, 1: 5}
    first, second = picked.indices.tolist()
    rest = [j for j in range(5) if j != first]
    want = ranks[second] ** -2 / sum(ranks[j] ** -2 for j in rest)
    assert picked.probabilities[1] == pytest.approx(want, rel=1e-12)


def test_power_zero_weights_come_last_and_extremes_behave():
    scores = torch.tensor([0.0, 0.5, -1.0, 0.2, 0.9], dtype=torch.float64)
    ids = list("abcde")
    for seed in range(20):
        picks = annealed_select_by_id(scores, ids, 5, "power", [1.0] * 5, seed).indices.tolist()
        assert sorted(picks[:3]) == [1, 3, 4] and sorted(picks[3:]) == [0, 2]
    greedy = annealed_select_by_id(scores, ids, 3, "power", [math.inf] * 3, seed=0)
    assert greedy.indices.tolist() == [4, 1, 3] and greedy.probabilities == [1.0, 1.0, 1.0]
    # A huge finite coldness does not overflow: it is top-k too.
    huge = annealed_select_by_id(scores, ids, 3, "softmax", [1e300] * 3, seed=0)
    assert huge.indices.tolist() == [4, 1, 3]
    uniform = annealed_select_by_id(scores, ids, 3, "power", [0.0] * 3, seed=0)
    assert uniform.probabilities == pytest.approx([1 / 5, 1 / 4, 1 / 3])


def test_greedy_first_then_exploratory():
    # 5 strong points and 200 weak ones: a cold first pick takes a strong one nearly always.
    scores = torch.cat([torch.full((5,), 1.0), torch.full((200,), 0.01)]).to(torch.float64)
    ids = [f"s{i}" for i in range(205)]
    schedule = coldness_schedule(4, 8.0, 0.01)
    strong_first = 0
    for seed in range(50):
        picked = annealed_select_by_id(scores, ids, 4, "power", schedule, seed)
        strong_first += picked.indices[0].item() < 5
        assert picked.probabilities[-1] < 0.05  # the last pick is nearly uniform
    assert strong_first == 50


# -------------------------------------------------------------------- the id-keyed contract
def test_same_seed_same_batch_and_pool_order_does_not_matter():
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(300, generator=generator, dtype=torch.float64)
    ids = [f"sample-{i}" for i in range(300)]
    schedule = coldness_schedule(8, 4.0, 0.25)
    for mode in ("power", "softmax", "softrank"):
        one = annealed_select_by_id(scores, ids, 8, mode, schedule, seed=42)
        again = annealed_select_by_id(scores, ids, 8, mode, schedule, seed=42)
        assert one.indices.tolist() == again.indices.tolist() and one.keys == again.keys
        order = list(range(300))
        random.Random(1).shuffle(order)
        permuted = annealed_select_by_id(
            scores[order], [ids[i] for i in order], 8, mode, schedule, seed=42
        )
        assert [ids[order[i]] for i in permuted.indices.tolist()] == [
            ids[i] for i in one.indices.tolist()
        ]
        assert permuted.keys == one.keys
        assert permuted.probabilities == pytest.approx(one.probabilities, rel=1e-12)
        other = annealed_select_by_id(scores, ids, 8, mode, schedule, seed=43)
        assert other.indices.tolist() != one.indices.tolist()


def test_ties_are_broken_by_id_not_position():
    scores = torch.ones(6, dtype=torch.float64)
    ids = ["f", "e", "d", "c", "b", "a"]
    greedy = annealed_select_by_id(scores, ids, 6, "softmax", [math.inf] * 6, seed=0)
    reversed_pool = annealed_select_by_id(scores, ids[::-1], 6, "softmax", [math.inf] * 6, seed=0)
    assert [ids[i] for i in greedy.indices.tolist()] == [
        ids[::-1][i] for i in reversed_pool.indices.tolist()
    ]
    assert sorted(greedy.indices.tolist()) == list(range(6))


def test_small_pool_and_empty_pool():
    scores = torch.tensor([0.2, 0.3], dtype=torch.float64)
    picked = annealed_select_by_id(scores, ["a", "b"], 5, "power", [1.0, 1.0], seed=0)
    assert sorted(picked.indices.tolist()) == [0, 1]
    empty = annealed_select_by_id(torch.empty(0), [], 3, "power", [1.0] * 3, seed=0)
    assert empty.indices.tolist() == [] and empty.probabilities == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "topk"}, "stochastic mode"),
        ({"mode": "random"}, "stochastic mode"),
        ({"schedule": [1.0, 1.0]}, "one coldness per pick"),
        ({"schedule": [1.0] * 4}, "one coldness per pick"),
        ({"schedule": 1.0}, "sequence"),
        ({"schedule": [1.0, -2.0, 1.0]}, r"schedule\[1\]"),
        ({"schedule": [1.0, math.nan, 1.0]}, r"schedule\[1\]"),
        ({"sample_ids": ["a", "a", "b", "c"]}, "unique"),
        ({"sample_ids": ["a", "b"]}, "one id per score"),
        ({"seed": -1}, "seed"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_clear_errors(kwargs, message):
    args = {
        "scores_N": torch.tensor([0.1, 0.2, 0.3, 0.4]),
        "sample_ids": ["a", "b", "c", "d"],
        "batch_size": 3,
        "mode": "power",
        "schedule": [1.0, 1.0, 1.0],
        "seed": 0,
    }
    args.update(kwargs)
    with pytest.raises(SelectionError, match=message):
        annealed_select_by_id(**args)


@pytest.mark.parametrize("start, end", [(0.0, 1.0), (1.0, 0.0), (math.inf, 2.0)])
def test_a_schedule_no_batch_could_follow_is_refused_by_config(start, end):
    from baldflow.config import ConfigError, validate

    params = {"acquisition": {"strategy": "annealed-power-bald", "coldness": start,
                              "coldness_end": end}}  # fmt: skip
    with pytest.raises(ConfigError, match="acquisition.coldness_end must equal") as info:
        validate(params)
    assert "cannot leave or reach 0 or inf" in str(info.value)
    params["acquisition"]["strategy"] = "power-bald"  # no schedule: nothing to refuse
    assert validate(params).acquisition.coldness == start
