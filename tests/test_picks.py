"""The batch and its ledger columns from shard summaries equal the one-shard (whole pool) case."""

from __future__ import annotations

import math

import pytest
import torch

from baldflow.acquisition.picks import merge_summaries, summarise_shard
from baldflow.acquisition.selection import (
    SelectionError,
    first_pick_probabilities,
    perturbed_keys,
    power_log_weights,
    softmax_log_weights,
    softrank_log_weights,
)
from baldflow.acquisition.sharded import select_by_id

LOG_WEIGHTS = {
    "power": power_log_weights,
    "softmax": softmax_log_weights,
    "softrank": softrank_log_weights,
}


def _pool(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    scores[:7] = 0.0  # weight 0 under power
    scores[7:12] = scores[20]  # ties
    return scores, [f"s{i:04d}" for i in torch.randperm(n, generator=g).tolist()]


def _split(scores, ids, cuts):
    edges = [0, *cuts, len(ids)]
    return [(scores[a:b], ids[a:b]) for a, b in zip(edges, edges[1:], strict=False)]


@pytest.mark.parametrize("mode", ["power", "softmax", "softrank", "topk", "random"])
@pytest.mark.parametrize("coldness", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("cuts", [[], [150], [0, 1, 299], [10, 10, 200]])
def test_sharded_summaries_give_the_single_batch_and_probabilities(mode, coldness, cuts):
    scores, ids = _pool()
    sorted_scores = scores.sort().values if mode == "softrank" else None
    parts = [
        summarise_shard(s, i, 12, mode, coldness, seed=5, pool_scores=sorted_scores)
        for s, i in _split(scores, ids, cuts)
    ]
    picks = merge_summaries(parts, 12, pool_scores=sorted_scores)
    assert picks.sample_ids == select_by_id(scores, ids, 12, mode, coldness, seed=5)
    row = {sid: r for r, sid in enumerate(ids)}
    assert picks.scores == [float(scores[row[sid]]) for sid in picks.sample_ids]
    if mode in LOG_WEIGHTS:
        _, scaled = perturbed_keys(LOG_WEIGHTS[mode](scores), torch.zeros_like(scores), coldness)
        expected = first_pick_probabilities(scaled, coldness)
        got = torch.tensor(picks.probabilities, dtype=torch.float64)
        want = expected[[row[sid] for sid in picks.sample_ids]]
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-300)
    elif mode == "random":
        assert picks.probabilities == [1.0 / len(ids)] * 12
    else:
        assert picks.probabilities[0] == 1.0 and sum(picks.probabilities) == 1.0


def test_power_with_no_positive_score_is_uniform():
    scores = torch.zeros(20, dtype=torch.float64)
    ids = [f"x{i}" for i in range(20)]
    parts = [summarise_shard(s, i, 5, "power", 1.0) for s, i in _split(scores, ids, [8])]
    picks = merge_summaries(parts, 5)
    assert len(picks.sample_ids) == 5 and picks.probabilities == [1 / 20] * 5
    assert all(not math.isnan(k) for k in picks.keys)


def test_errors_name_the_problem():
    scores, ids = _pool(30)
    with pytest.raises(SelectionError, match="no shard summaries"):
        merge_summaries([], 3)
    part = summarise_shard(scores, ids, 3, "softrank", 1.0, pool_scores=scores.sort().values)
    with pytest.raises(SelectionError, match="sorted scores"):
        merge_summaries([part], 3)
    with pytest.raises(SelectionError):
        summarise_shard(scores, ids, 0, "power")


@pytest.mark.parametrize("mode", ["power", "softmax", "softrank", "random"])
def test_keys_by_id_are_the_keys_the_batch_was_cut_by(mode):
    from baldflow.acquisition.picks import keys_by_id

    scores, ids = _pool()
    sorted_scores = scores.sort().values if mode == "softrank" else None
    keys = keys_by_id(scores, ids, mode, 2.0, seed=5, pool_scores=sorted_scores)
    picks = merge_summaries(
        [summarise_shard(scores, ids, 12, mode, 2.0, seed=5, pool_scores=sorted_scores)],
        12,
        pool_scores=sorted_scores,
    )
    row = {sid: r for r, sid in enumerate(ids)}
    assert [float(keys[row[sid]]) for sid in picks.sample_ids] == picks.keys
    assert keys_by_id(scores, ids, "topk", 1.0) is None
