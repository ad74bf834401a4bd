"""Scores checked against values worked out by hand and against their definitions."""

import math

import pytest
import torch
from helpers import random_log_probs

from baldflow.acquisition import scores
from baldflow.acquisition.scores import ScoreInputError, get_score


def log_probs_from(probs) -> torch.Tensor:
    return torch.as_tensor(probs, dtype=torch.float64).log()


def test_bald_is_zero_when_all_samples_agree():
    probs = [[[0.7, 0.2, 0.1]] * 5]
    assert scores.bald(log_probs_from(probs)).item() == pytest.approx(0.0, abs=1e-12)


def test_bald_of_a_single_sample_is_exactly_zero():
    log_probs = random_log_probs(N=50, K=1, dtype=torch.float32)
    assert torch.equal(scores.bald(log_probs), torch.zeros(50, dtype=torch.float64))


def test_bald_of_two_disagreeing_one_hot_samples_is_log_2():
    # Two samples, each certain, of different classes: H[y] = log 2, E H[y|w] = 0.
    log_probs = log_probs_from([[[1.0, 0.0], [0.0, 1.0]]])
    assert torch.isinf(log_probs).any()  # the 0 log 0 case is really exercised
    assert scores.bald(log_probs).item() == pytest.approx(math.log(2), abs=1e-12)


def test_bald_by_hand_for_a_mixed_case():
    # p1 = (0.9, 0.1), p2 = (0.5, 0.5): mean (0.7, 0.3).
    log_probs = log_probs_from([[[0.9, 0.1], [0.5, 0.5]]])
    h_mean = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    h1 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    h2 = math.log(2)
    assert scores.bald(log_probs).item() == pytest.approx(h_mean - (h1 + h2) / 2, abs=1e-12)


def test_bald_equals_entropy_minus_expected_conditional_entropy():
    log_probs = random_log_probs()
    decomposition = scores.entropy(log_probs) - scores.expected_conditional_entropy(log_probs)
    torch.testing.assert_close(scores.bald(log_probs), decomposition.clamp_min(0))


def test_float32_input_is_close_to_float64_and_returns_float64():
    log_probs = random_log_probs(N=500)
    fast = scores.bald(log_probs.float())
    assert fast.dtype == torch.float64
    torch.testing.assert_close(fast, scores.bald(log_probs), atol=1e-5, rtol=0)


def test_chunking_does_not_change_any_score():
    log_probs = random_log_probs(N=103)
    for name, score in scores.SCORES.items():
        whole = score(log_probs)
        tiny_chunks = score(log_probs, chunk_bytes=1)  # one row per chunk
        torch.testing.assert_close(whole, tiny_chunks, msg=name)


def test_scores_by_hand():
    # Mean distribution (0.5, 0.3, 0.2) from two samples; votes: class 0 and class 1.
    log_probs = log_probs_from([[[0.6, 0.3, 0.1], [0.4, 0.3, 0.3]]])
    assert scores.margin(log_probs).item() == pytest.approx(1 - (0.5 - 0.3))
    assert scores.least_confidence(log_probs).item() == pytest.approx(0.5)
    # Both samples vote for class 0.
    assert scores.variation_ratios(log_probs).item() == pytest.approx(0.0)
    stds = [0.1, 0.0, 0.1]  # population std over the two samples, per class
    assert scores.mean_std(log_probs).item() == pytest.approx(sum(stds) / 3)
    disagree = log_probs_from([[[0.8, 0.2], [0.2, 0.8]], [[0.8, 0.2], [0.8, 0.2]]])
    assert scores.variation_ratios(disagree).tolist() == pytest.approx([0.5, 0.0])


@pytest.mark.parametrize("name", sorted(scores.SCORES))
def test_every_score_is_float64_nonnegative_and_finite_with_minus_inf(name):
    log_probs = random_log_probs(N=20)
    log_probs[::3, :, 0] = -torch.inf  # some classes impossible under every sample
    log_probs = torch.log_softmax(log_probs, -1)
    result = get_score(name)(log_probs)
    assert result.dtype == torch.float64
    assert result.shape == (20,)
    assert torch.isfinite(result).all()
    assert (result >= 0).all()


@pytest.mark.parametrize("name", sorted(scores.SCORES))
def test_nan_input_is_a_clear_error(name):
    log_probs = random_log_probs(N=10)
    log_probs[7, 2, 1] = torch.nan
    with pytest.raises(ScoreInputError, match="NaN.*index 7"):
        get_score(name)(log_probs)


def test_wrong_shape_is_a_clear_error():
    with pytest.raises(ScoreInputError, match="3 dimensions"):
        scores.bald(torch.zeros(4, 3))


def test_unknown_score_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid scores: bald, entropy"):
        get_score("balt")


def strided_layouts(dtype) -> dict[str, torch.Tensor]:
    """The same kind of log-probabilities in layouts a caller may well hand over: views that
    are not row-major [N, K, C], as a model that outputs [K, N, C] or [C, N, K] gives them."""
    generator = torch.Generator().manual_seed(1)

    def log_softmax(*shape, dim):
        logits = torch.randn(*shape, generator=generator, dtype=torch.float64) * 3
        return torch.log_softmax(logits, dim).to(dtype)

    with_minus_inf = log_softmax(9, 40, 4, dim=-1)
    with_minus_inf[::4, ::3, 1] = -torch.inf  # a class some samples rule out: the exact path
    return {
        "samples first (K, N, C) transposed": log_softmax(9, 40, 4, dim=-1).transpose(0, 1),
        "classes first (C, N, K) permuted": log_softmax(4, 40, 9, dim=0).permute(1, 2, 0),
        "every other row and sample": log_softmax(80, 18, 4, dim=-1)[::2, ::2],
        "transposed with -inf": torch.log_softmax(with_minus_inf, -1).transpose(0, 1),
        "one class broadcast over samples": log_softmax(40, 1, 4, dim=-1).expand(40, 9, 4),
    }


ALL_SCORES = {**scores.SCORES, "expected_conditional_entropy": scores.expected_conditional_entropy}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(ALL_SCORES))
def test_every_score_is_the_same_on_a_non_contiguous_view(name, dtype):
    score = ALL_SCORES[name]
    for layout, view in strided_layouts(dtype).items():
        assert not view.is_contiguous(), layout
        copy = view.contiguous()
        atol = 1e-12 if dtype == torch.float64 else 1e-6
        for chunk_bytes in (scores.DEFAULT_CHUNK_BYTES, 7 * 9 * 4 * 8):  # one chunk; several
            torch.testing.assert_close(
                score(view, chunk_bytes=chunk_bytes),
                score(copy, chunk_bytes=chunk_bytes),
                rtol=0,
                atol=atol,
                msg=f"{name} on {layout}, chunk_bytes={chunk_bytes}",
            )
