"""Selection: first-pick frequencies against the target distributions; properties of every mode."""

import math

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


score_lists = st.lists(
    st.one_of(
        st.floats(min_value=-5, max_value=5, allow_nan=False),
        st.sampled_from([0.0, 0.5, -0.5]),  # ties, zeros and negatives on purpose
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    scores=score_lists,
    batch_size=st.integers(1, 80),
    mode=st.sampled_from(MODES),
    coldness=st.sampled_from([0.0, 0.5, 1.0, 8.0]),
    seed=st.integers(0, 2**31),
)
def test_selection_properties(scores, batch_size, mode, coldness, seed):
    scores_N = torch.tensor(scores, dtype=torch.float64)
    first = select(scores_N, batch_size, mode, coldness, torch.Generator().manual_seed(seed))
    again = select(scores_N, batch_size, mode, coldness, torch.Generator().manual_seed(seed))
    assert first.dtype == torch.long
    assert len(first) == min(batch_size, len(scores))
    assert len(set(first.tolist())) == len(first)
    assert all(0 <= i < len(scores) for i in first.tolist())
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
    assert details.probabilities_N.sum().item() == pytest.approx(1.0)
    assert not torch.isnan(details.keys_N).any()
