"""Selection: first-pick frequencies against the target distributions; properties of every mode."""

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from baldflow.acquisition.selection import MODES, SelectionError, select

DRAWS = 5_000


def first_pick_frequencies(scores, mode, coldness=1.0, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    counts = torch.zeros(len(scores))
    for _ in range(DRAWS):
        counts[select(torch.tensor(scores), 1, mode, coldness, generator)[0]] += 1
    return counts / DRAWS


def assert_frequencies(observed, expected):
    # 4 standard errors of a binomial proportion: a real mismatch fails, noise does not.
    expected = torch.tensor(expected, dtype=torch.float32)
    tolerance = 4 * torch.sqrt(expected * (1 - expected) / DRAWS) + 1e-3
    assert ((observed - expected).abs() <= tolerance).all(), (observed, expected)


def test_power_first_pick_is_proportional_to_the_score():
    assert_frequencies(first_pick_frequencies([0.5, 0.25, 0.25], "power"), [0.5, 0.25, 0.25])


def test_power_with_coldness_two_squares_the_weights():
    weights = torch.tensor([0.5, 0.25, 0.25]) ** 2
    expected = (weights / weights.sum()).tolist()
    assert_frequencies(first_pick_frequencies([0.5, 0.25, 0.25], "power", 2.0), expected)


def test_softrank_first_pick_follows_inverse_rank():
    frequencies = first_pick_frequencies([3.0, 2.0, 1.0], "softrank")
    assert_frequencies(frequencies, [6 / 11, 3 / 11, 2 / 11])


def test_softmax_first_pick_follows_exp_of_the_score():
    scores = [1.0, 0.0, -1.0]
    weights = [math.exp(s) for s in scores]
    expected = [w / sum(weights) for w in weights]
    assert_frequencies(first_pick_frequencies(scores, "softmax"), expected)


@pytest.mark.parametrize("mode", ["power", "softmax", "softrank"])
def test_large_coldness_is_top_k(mode):
    scores = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.5])
    generator = torch.Generator().manual_seed(3)
    for _ in range(50):
        picked = select(scores, 2, mode, coldness=1e4, generator=generator)
        assert picked.tolist() == [1, 3]
    assert select(scores, 2, mode, coldness=math.inf).tolist() == [1, 3]


def test_zero_coldness_is_uniform():
    assert_frequencies(first_pick_frequencies([0.9, 0.05, 0.05], "power", 0.0), [1 / 3] * 3)


def test_power_takes_nonpositive_scores_only_after_all_positive_ones():
    scores = torch.tensor([0.0, 0.3, -1.0, 0.2, 0.0, 0.1])
    generator = torch.Generator().manual_seed(0)
    seen_fill = set()
    for _ in range(200):
        picked = select(scores, 5, "power", generator=generator).tolist()
        assert set(picked[:3]) == {1, 3, 5}
        seen_fill.update(picked[3:])
    assert seen_fill == {0, 2, 4}  # the rest is filled uniformly among the zero-weight points


def test_topk_breaks_ties_toward_the_lower_index():
    assert select(torch.tensor([0.5, 0.7, 0.5, 0.7, 0.5]), 3, "topk").tolist() == [1, 3, 0]


def test_details_give_first_pick_probabilities_and_keys():
    generator = torch.Generator().manual_seed(0)
    details = select(
        torch.tensor([0.5, 0.25, 0.25]), 2, "power", generator=generator, return_details=True
    )
    torch.testing.assert_close(
        details.probabilities_N, torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    )
    assert details.keys_N.shape == (3,)
    # The picks are the points with the largest perturbed keys, in order.
    assert details.indices.tolist() == details.keys_N.argsort(descending=True)[:2].tolist()


def test_batch_larger_than_pool_takes_the_whole_pool():
    assert sorted(select(torch.tensor([0.1, 0.2]), 5, "softmax").tolist()) == [0, 1]
    assert select(torch.tensor([], dtype=torch.float64), 3, "power").numel() == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores_N": torch.tensor([0.1, math.nan]), "batch_size": 1}, "finite.*index 1"),
        ({"scores_N": torch.tensor([0.1, math.inf]), "batch_size": 1}, "finite"),
        ({"scores_N": torch.tensor([0.1]), "batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"scores_N": torch.tensor([0.1]), "batch_size": 1, "coldness": -1}, "coldness"),
        ({"scores_N": torch.tensor([0.1]), "batch_size": 1, "mode": "gready"}, "valid modes"),
        ({"scores_N": torch.zeros(2, 2), "batch_size": 1}, "one-dimensional"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, message):
    with pytest.raises(SelectionError, match=message):
        select(**kwargs)


# ------------------------------------------------------------------ extreme coldness and scores
HUGE = 1.7976931348623157e308  # the largest double
TINY = 5e-324  # the smallest (subnormal) positive double


def float64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_softmax_with_huge_coldness_picks_distinct_indices_in_score_order():
    # beta * s overflows to +-inf here: the keys must not, or equal infinite keys repeat picks.
    scores = float64([3.0, 2.0, -1.0, -2.0, 0.0])
    for seed in range(20):
        picked = select(scores, 5, "softmax", 1e308, torch.Generator().manual_seed(seed))
        assert picked.tolist() == [0, 1, 4, 2, 3]


def test_power_with_huge_coldness_orders_by_score_and_shuffles_only_ties():
    # 0 has weight 0; TINY and HUGE are the extremes a weight s^beta can come from.
    scores = float64([0.0, TINY, HUGE, 0.5, 0.5, 2.0, 0.1, 0.05])
    orders = set()
    for seed in range(40):
        picked = select(scores, 8, "power", 1e308, torch.Generator().manual_seed(seed)).tolist()
        assert picked[:2] == [2, 5] and picked[4:] == [6, 7, 1, 0]
        orders.add(tuple(picked[2:4]))
    # Equal scores have equal weights at any coldness: their order stays a fair coin.
    assert orders == {(3, 4), (4, 3)}


@pytest.mark.parametrize("mode", ["power", "softmax", "softrank"])
def test_equal_scores_at_huge_coldness_are_a_uniform_order(mode):
    scores = float64([0.5] * 4)
    first = first_pick_frequencies(scores.tolist(), mode, coldness=1e308)
    assert_frequencies(first, [0.25] * 4)


@pytest.mark.parametrize("mode", ["power", "softmax", "softrank"])
@pytest.mark.parametrize("coldness", [0.0, TINY, 1e-300, 1.0, 1e16, 1e308, math.inf])
def test_extreme_coldness_gives_finite_details(mode, coldness):
    scores = float64([0.0, TINY, 1e-300, 0.5, 0.5, 3.0, 1e300, HUGE, -1.0, -HUGE])
    details = select(
        scores, 10, mode, coldness, torch.Generator().manual_seed(0), return_details=True
    )
    assert sorted(details.indices.tolist()) == list(range(10))
    assert torch.isfinite(details.probabilities_N).all()
    assert details.probabilities_N.sum().item() == pytest.approx(1.0)
    assert not torch.isnan(details.keys_N).any() and not (details.keys_N == math.inf).any()


# ------------------------------------------------------------------ properties of every mode
COLDNESSES = [0.0, TINY, 1e-300, 0.5, 1.0, 8.0, 1e16, 1e308, math.inf]
score_values = st.one_of(
    st.floats(min_value=-5, max_value=5, allow_nan=False),
    st.floats(allow_nan=False, allow_infinity=False),  # the whole range, subnormals included
    # Ties, zeros, negatives and the extremes on purpose.
    st.sampled_from([0.0, -0.0, 0.5, -0.5, TINY, 1e-300, 1e300, HUGE, -HUGE]),
)
score_lists = st.lists(score_values, min_size=1, max_size=60)


def log_weights(scores_N: torch.Tensor, mode: str) -> torch.Tensor:
    """log w_i at coldness 1 (power: -inf for s <= 0), straight from the definitions."""
    if mode == "power":
        return torch.where(scores_N > 0, scores_N.clamp_min(TINY).log(), -math.inf)
    if mode == "softmax":
        return scores_N
    ranks = torch.tensor([1 + int((scores_N > s).sum()) for s in scores_N.tolist()])
    return -ranks.to(torch.float64).log()


def outweighs(mode: str, coldness: float, scores_N: torch.Tensor, i: int, j: int) -> bool:
    """Whether w_i^beta / w_j^beta > e^100, so that j comes before i with probability < e^-56.

    Two standard Gumbel draws differ by less than 44, so beyond a log-ratio of 100 the order is
    certain for any rounding of the keys. The ratio is worked out in exact fractions: in floats
    beta * (l_i - l_j) overflows where the true value is tiny (5e-324 * (1e300 + 1e308)).
    """
    lw = log_weights(scores_N, mode)
    l_i, l_j = float(lw[i]), float(lw[j])
    if math.isinf(l_i):
        return False  # weight 0 outweighs nothing
    if math.isinf(l_j):
        return True  # a positive weight outweighs a zero one at any beta > 0
    return Fraction(coldness) * (Fraction(l_i) - Fraction(l_j)) > 100


@settings(max_examples=300, deadline=None)
@given(
    scores=score_lists,
    batch_size=st.integers(1, 80),
    mode=st.sampled_from(MODES),
    coldness=st.sampled_from(COLDNESSES),
    seed=st.integers(0, 2**31),
)
def test_selection_properties(scores, batch_size, mode, coldness, seed):
    scores_N = torch.tensor(scores, dtype=torch.float64)
    first = select(scores_N, batch_size, mode, coldness, torch.Generator().manual_seed(seed))
    again = select(scores_N, batch_size, mode, coldness, torch.Generator().manual_seed(seed))
    picked = first.tolist()
    assert first.dtype == torch.long
    assert len(picked) == min(batch_size, len(scores))
    assert len(set(picked)) == len(picked)
    assert all(0 <= i < len(scores) for i in picked)
    assert torch.equal(first, again)
    details = select(
        scores_N,
        batch_size,
        mode,
        coldness,
        torch.Generator().manual_seed(seed),
        return_details=True,
    )
    assert torch.equal(details.indices, first)
    probabilities = details.probabilities_N
    assert torch.isfinite(probabilities).all() and (probabilities >= 0).all()
    assert probabilities.sum().item() == pytest.approx(1.0)
    keys = details.keys_N
    assert not torch.isnan(keys).any() and not (keys == math.inf).any()
    # The picks are the largest keys, in order.
    assert (keys[first][:-1] >= keys[first][1:]).all()
    left = torch.ones(len(scores), dtype=torch.bool)
    left[first] = False
    assert not left.any() or keys[left].max() <= keys[first].min()

    if mode == "random" or mode == "topk":
        return
    # The limits: coldness 0 is the uniform law (the very draw of `random`), inf is top-k.
    if coldness == 0:
        uniform = select(scores_N, batch_size, "random", 0.0, torch.Generator().manual_seed(seed))
        assert torch.equal(first, uniform)
        return
    if math.isinf(coldness):
        assert torch.equal(first, select(scores_N, batch_size, "topk"))
        return
    # In between, no pick may come before (or be taken instead of) a point that outweighs it
    # beyond all chance: at huge coldness that is the top-k order, ties left to chance.
    for position, i in enumerate(picked):
        later = picked[position + 1 :] + [j for j in range(len(scores)) if left[j]]
        assert not any(outweighs(mode, coldness, scores_N, j, i) for j in later), (i, later)
    if mode == "power":
        positive = [bool(s > 0) for s in scores]
        flags = [positive[i] for i in picked]
        # Weight-0 points (s <= 0) only after every positive one.
        assert flags == sorted(flags, reverse=True)
        assert sum(flags) == min(sum(positive), len(picked))


# ------------------------------------------------------------------ the without-replacement law
def plackett_luce_pairs(p: list[float]) -> dict[tuple[int, int], float]:
    """P(first pick i, second pick j) of sequential sampling without replacement."""
    return {(i, j): p[i] * p[j] / (1 - p[i]) for i in range(3) for j in range(3) if i != j}


def with_replacement_pairs(p: list[float]) -> dict[tuple[int, int], float]:
    """The law of a wrong sampler: two independent draws, kept when they differ."""
    distinct = 1 - sum(q * q for q in p)
    return {(i, j): p[i] * p[j] / distinct for i in range(3) for j in range(3) if i != j}


def first_then_uniform_pairs(p: list[float]) -> dict[tuple[int, int], float]:
    """The law of another wrong sampler: a weighted first pick, a uniform second."""
    return {(i, j): p[i] / 2 for i in range(3) for j in range(3) if i != j}


PAIR_DRAWS = 12_000


@pytest.mark.parametrize(
    ("mode", "coldness", "scores", "weights"),
    [
        ("power", 1.0, [0.6, 0.3, 0.1], [0.6, 0.3, 0.1]),
        # Above coldness 1 the keys are rescaled (log w + g / beta): the law must not change.
        ("softmax", 3.0, [0.5, 0.2, -0.1], [math.exp(3 * s) for s in (0.5, 0.2, -0.1)]),
        # Below coldness 1 the log-weights are scaled (beta log w + g).
        ("power", 0.5, [0.81, 0.09, 0.01], [0.9, 0.3, 0.1]),
        ("softrank", 2.0, [0.9, 0.1, 0.4], [1.0, 1 / 9, 1 / 4]),
    ],
)
def test_first_two_picks_follow_plackett_luce(mode, coldness, scores, weights):
    p = [w / sum(weights) for w in weights]
    scores_N = float64(scores)
    details = select(scores_N, 2, mode, coldness, return_details=True)
    torch.testing.assert_close(details.probabilities_N, float64(p), rtol=1e-12, atol=0)

    generator = torch.Generator().manual_seed(0)
    counts: dict[tuple[int, int], int] = dict.fromkeys(plackett_luce_pairs(p), 0)
    for _ in range(PAIR_DRAWS):
        i, j = select(scores_N, 2, mode, coldness, generator).tolist()
        counts[(i, j)] += 1
    expected = plackett_luce_pairs(p)
    assert sum(expected.values()) == pytest.approx(1.0)
    # 4.5 standard errors per cell: sampling noise passes with a fixed seed, a wrong law not.
    tolerance = {pair: 4.5 * math.sqrt(q * (1 - q) / PAIR_DRAWS) for pair, q in expected.items()}
    for pair, q in expected.items():
        assert abs(counts[pair] / PAIR_DRAWS - q) <= tolerance[pair], (pair, counts, expected)
    # The marginal of the first pick is the `return_details` first-pick probability.
    for i in range(3):
        first = sum(n for (a, _), n in counts.items() if a == i) / PAIR_DRAWS
        assert abs(first - p[i]) <= 4.5 * math.sqrt(p[i] * (1 - p[i]) / PAIR_DRAWS)
    # The check is sharp enough to tell the law from the nearest wrong ones.
    for wrong in (with_replacement_pairs(p), first_then_uniform_pairs(p)):
        assert max(abs(wrong[pair] - q) / tolerance[pair] for pair, q in expected.items()) > 2
