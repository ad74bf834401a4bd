"""The strategy registry and `acquire`, the one entry point the pipeline calls."""

import pytest
import torch

from baldflow.acquisition import (
    STRATEGY_NAMES,
    UnknownStrategyError,
    acquire,
    batchbald,
    get_score,
    get_strategy,
)


def test_names_cover_every_mode_score_pair_plus_random_and_batchbald():
    for name in [
        "power-bald",
        "softmax-bald",
        "softrank-bald",
        "topk-bald",
        "power-entropy",
        "topk-margin",
        "random",
        "batchbald",
    ]:
        assert name in STRATEGY_NAMES
    power_bald = get_strategy("power-bald")
    assert (power_bald.mode, power_bald.score, power_bald.needs_log_probs) == (
        "power",
        "bald",
        False,
    )
    assert get_strategy("batchbald").needs_log_probs


def test_unknown_strategy_lists_the_valid_names():
    with pytest.raises(UnknownStrategyError, match="valid strategies: .*power-bald"):
        get_strategy("powerbald")


def test_acquire_records_scores_probabilities_and_keys():
    scores_N = torch.tensor([0.4, 0.1, 0.3, 0.2], dtype=torch.float64)
    chosen = acquire("power-bald", 2, scores_N=scores_N, generator=torch.Generator().manual_seed(0))
    assert chosen.scores.tolist() == scores_N[chosen.indices].tolist()
    assert chosen.probabilities.tolist() == pytest.approx((scores_N[chosen.indices] / 1.0).tolist())
    assert chosen.keys.shape == (2,)
    top = acquire("topk-bald", 2, scores_N=scores_N)
    assert top.indices.tolist() == [0, 2] and top.probabilities is None


def test_random_needs_no_scores_and_batchbald_needs_log_probs():
    chosen = acquire("random", 3, pool_size=10, generator=torch.Generator().manual_seed(0))
    assert len(set(chosen.indices.tolist())) == 3 and chosen.scores is None
    with pytest.raises(ValueError, match="needs log_probs_N_K_C"):
        acquire("batchbald", 2, scores_N=torch.rand(5))
    log_probs = torch.log_softmax(
        torch.randn(20, 4, 3, generator=torch.Generator().manual_seed(0)), -1
    )
    picked = acquire(
        "batchbald", 3, log_probs_N_K_C=log_probs, generator=torch.Generator().manual_seed(0)
    )
    assert len(picked.indices) == 3 and picked.scores.shape == (3,)


def test_min_mc_samples_follows_what_each_score_does_with_one_sample():
    # With K = 1 a disagreement score is 0 for every point: such strategies need K >= 2.
    generator = torch.Generator().manual_seed(0)
    one_sample = torch.log_softmax(torch.randn(30, 1, 4, generator=generator) * 3, -1)
    for name in STRATEGY_NAMES:
        strategy = get_strategy(name)
        if strategy.score == "epig":  # needs targets: the pool's own first points
            from baldflow.acquisition.epig import epig_scores

            blind = bool((epig_scores(one_sample, one_sample[:5]) == 0).all())
        elif strategy.score is not None:
            blind = bool((get_score(strategy.score)(one_sample) == 0).all())
        elif strategy.needs_log_probs:  # batchbald and stochastic-batchbald
            picked = batchbald(one_sample, 3, generator=generator, return_details=True)
            # Its gains come out as rounding noise (~1e-8) rather than exact zeros.
            blind = bool((picked.gains.abs() < 1e-6).all())
        else:
            blind = False  # random, badge and coreset use the model's output even at K = 1
        assert strategy.min_mc_samples == (2 if blind else 1), name
    assert get_strategy("power-bald").min_mc_samples == 2
    assert get_strategy("power-entropy").min_mc_samples == 1
