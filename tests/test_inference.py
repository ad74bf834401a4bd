"""Streamed MC prediction and pool scoring: one set of masks per pass, chunking-independent."""

from __future__ import annotations

import pytest
import torch

from baldflow.acquisition import scores
from baldflow.inference import InferenceError, predict_log_probs, score_pool
from baldflow.models import build_model


@pytest.fixture
def cnn():
    return build_model("cnn", (1, 8, 8), 10, seed=0).eval()


@pytest.fixture
def pool():
    return torch.randn(61, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def seeded(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_score_pool_matches_scoring_the_full_log_probs(cnn, pool):
    log_probs_N_K_C = predict_log_probs(cnn, pool, 12, seeded())
    assert log_probs_N_K_C.shape == (61, 12, 10) and log_probs_N_K_C.dtype == torch.float32
    for name in ("bald", "entropy", "margin", "variation_ratios"):
        scores_N = score_pool(cnn, pool, name, 12, seeded(), chunk_size=9)
        assert scores_N.dtype == torch.float64 and scores_N.shape == (61,)
        expected = scores.get_score(name)(log_probs_N_K_C)
        torch.testing.assert_close(scores_N, expected, rtol=1e-5, atol=1e-6)


def test_scores_do_not_depend_on_chunk_size(cnn, pool):
    by_chunk = [score_pool(cnn, pool, "bald", 8, seeded(), chunk_size=s) for s in (7, 700)]
    torch.testing.assert_close(by_chunk[0], by_chunk[1], rtol=1e-5, atol=1e-6)


def test_one_set_of_masks_per_pass_and_new_masks_per_generator_state(cnn, pool):
    generator = seeded(3)
    first = score_pool(cnn, pool, "bald", 8, generator)
    second = score_pool(cnn, pool, "bald", 8, generator)  # generator moved on: new masks
    replay = score_pool(cnn, pool, "bald", 8, seeded(3))
    assert torch.equal(first, replay)
    assert not torch.allclose(first, second)
    # Within one pass a duplicated input gets exactly the same score wherever it sits.
    doubled = torch.cat([pool, pool])
    scores_2N = score_pool(cnn, doubled, "bald", 8, seeded(3), chunk_size=13)
    torch.testing.assert_close(scores_2N[:61], scores_2N[61:], rtol=1e-5, atol=1e-6)


def test_streaming_never_hands_the_score_more_than_a_chunk(cnn, pool):
    seen = []

    def recording_bald(log_probs_B_K_C):
        seen.append(tuple(log_probs_B_K_C.shape))
        return scores.bald(log_probs_B_K_C)

    scores_N = score_pool(cnn, pool, recording_bald, 16, seeded(), chunk_size=10)
    assert scores_N.shape == (61,)
    assert [s[0] for s in seen] == [10] * 6 + [1]
    assert all(s[1:] == (16, 10) for s in seen)


def test_predict_log_probs_for_a_candidate_subset(cnn, pool):
    full = predict_log_probs(cnn, pool, 6, seeded(), chunk_size=20)
    indices = torch.tensor([60, 3, 17, 3])
    subset = predict_log_probs(cnn, pool, 6, seeded(), chunk_size=3, indices=indices)
    torch.testing.assert_close(subset, full[indices], rtol=1e-6, atol=1e-7)
    scored = score_pool(cnn, pool, "bald", 6, seeded(), indices=indices)
    torch.testing.assert_close(scored, scores.bald(full[indices]), rtol=1e-5, atol=1e-6)
    empty = predict_log_probs(cnn, pool, 6, seeded(), indices=torch.tensor([], dtype=torch.long))
    assert empty.shape == (0, 6, 10)


def test_deterministic_pass_with_zero_mc_samples(cnn, pool):
    log_probs = predict_log_probs(cnn, pool, 0, seeded())
    assert log_probs.shape == (61, 1, 10)
    with torch.no_grad():
        torch.testing.assert_close(log_probs, cnn(pool, 0))
    # One deterministic sample carries no epistemic uncertainty.
    assert score_pool(cnn, pool, "bald", 0, seeded()).abs().max() < 1e-6


def test_mode_is_restored_and_progress_is_quiet_off_a_terminal(cnn, pool, capsys):
    cnn.train()
    score_pool(cnn, pool, "entropy", 4, seeded(), chunk_size=5, progress=True)
    assert cnn.training
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_bad_arguments_are_clear_errors(cnn, pool):
    with pytest.raises(ValueError, match="bald"):
        score_pool(cnn, pool, "no-such-score", 4, seeded())
    with pytest.raises(InferenceError, match="mc_samples must be >= 0, got -1"):
        score_pool(cnn, pool, "bald", -1, seeded())
    with pytest.raises(InferenceError, match="chunk_size must be >= 1, got 0"):
        predict_log_probs(cnn, pool, 4, seeded(), chunk_size=0)


def test_a_failing_score_leaves_no_inference_or_eval_mode_behind(cnn, pool):
    def broken(log_probs_B_K_C):
        raise RuntimeError("score failed")

    cnn.train()
    with pytest.raises(RuntimeError, match="score failed"):
        score_pool(cnn, pool, broken, 4, seeded(), chunk_size=5)
    assert not torch.is_inference_mode_enabled()
    assert cnn.training
