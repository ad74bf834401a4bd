"""EPIG checked against its definition enumerated term by term, and the target-id draw."""

import math
import random

import numpy as np
import pytest
import torch
from helpers import random_log_probs

from baldflow.acquisition import epig as epig_module
from baldflow.acquisition.epig import epig_score_function, epig_scores, target_ids, target_seed
from baldflow.acquisition.scores import ScoreInputError, bald
from baldflow.acquisition.sharded import id_hashes


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def xlogx(p: float) -> float:
    return p * math.log(p) if p > 0 else 0.0


def epig_by_enumeration(log_probs_N_K_C, log_probs_T_K_C) -> list[float]:
    """The definition, one Python loop per symbol: no shared code with the module."""
    p = log_probs_N_K_C.exp().tolist()
    q = log_probs_T_K_C.exp().tolist()
    N, K, C = log_probs_N_K_C.shape
    T = log_probs_T_K_C.shape[0]
    out = []
    for n in range(N):
        total = 0.0
        for t in range(T):
            h_y = -sum(xlogx(sum(p[n][k][y] for k in range(K)) / K) for y in range(C))
            h_ys = -sum(xlogx(sum(q[t][k][ys] for k in range(K)) / K) for ys in range(C))
            h_joint = 0.0
            for y in range(C):
                for ys in range(C):
                    joint = sum(p[n][k][y] * q[t][k][ys] for k in range(K)) / K
                    h_joint -= xlogx(joint)
            total += h_y + h_ys - h_joint
        out.append(total / T)
    return out


# ------------------------------------------------------------------------------------ maths
def test_agrees_with_direct_enumeration():
    pool = random_log_probs(4, 5, 3, seed=0)
    targets = random_log_probs(3, 5, 3, seed=1)
    got = epig_scores(pool, targets)
    assert got.dtype == torch.float64 and got.shape == (4,)
    expected = torch.tensor(epig_by_enumeration(pool, targets), dtype=torch.float64)
    assert torch.allclose(got, expected, rtol=0, atol=1e-10)
    assert (got > 1e-4).all()  # the random case is not trivially 0


def test_agrees_with_enumeration_with_zero_probabilities_and_float32_input():
    pool = random_log_probs(4, 5, 3, seed=2)
    pool[0, :, 0] = -math.inf  # class 0 impossible for point 0 under every sample
    pool[0] = torch.log_softmax(pool[0], -1)
    pool[1, 2] = torch.tensor([0.0, -math.inf, -math.inf])  # a one-hot sample
    targets = random_log_probs(3, 5, 3, seed=3)
    targets[2, :, 1] = -math.inf
    targets[2] = torch.log_softmax(targets[2], -1)
    expected = torch.tensor(epig_by_enumeration(pool, targets), dtype=torch.float64)
    got = epig_scores(pool, targets)
    assert not torch.isnan(got).any()
    assert torch.allclose(got, expected, rtol=0, atol=1e-10)
    got32 = epig_scores(pool.float(), targets.float())
    assert got32.dtype == torch.float64
    assert torch.allclose(got32, expected, rtol=0, atol=1e-5)


def test_two_certain_disagreeing_samples_give_log_2():
    # w_1 says class 0 everywhere, w_2 class 1: y determines y*, so I = H[y] = log 2.
    one_hot = torch.tensor([[[0.0, -math.inf], [-math.inf, 0.0]]], dtype=torch.float64)
    assert epig_scores(one_hot, one_hot).item() == pytest.approx(math.log(2), abs=1e-12)


def test_zero_when_every_sample_agrees():
    pool = random_log_probs(6, 1, 4, seed=4).expand(6, 7, 4)
    targets = random_log_probs(5, 1, 4, seed=5).expand(5, 7, 4)
    got = epig_scores(pool, targets)
    assert torch.allclose(got, torch.zeros(6, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (got >= 0).all()


def test_exactly_zero_with_one_sample():
    got = epig_scores(random_log_probs(9, 1, 4, seed=6), random_log_probs(3, 1, 4, seed=7))
    assert torch.equal(got, torch.zeros(9, dtype=torch.float64))


def test_never_negative_and_at_most_bald():
    # I(y; y*) <= I(y; w) (data processing: y -> w -> y*), so EPIG <= BALD pointwise.
    pool = random_log_probs(200, 8, 5, seed=8, scale=0.3)
    targets = random_log_probs(20, 8, 5, seed=9)
    got = epig_scores(pool, targets)
    assert (got >= 0).all()
    assert (got <= bald(pool) + 1e-12).all()


def test_invariant_to_permuting_targets():
    pool = random_log_probs(30, 6, 4, seed=10)
    targets = random_log_probs(17, 6, 4, seed=11)
    permuted = targets[torch.randperm(17, generator=torch.Generator().manual_seed(0))]
    assert torch.allclose(epig_scores(pool, targets), epig_scores(pool, permuted), atol=1e-13)


def test_permuting_the_pool_permutes_the_scores():
    pool = random_log_probs(30, 6, 4, seed=12)
    targets = random_log_probs(5, 6, 4, seed=13)
    order = torch.randperm(30, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(epig_scores(pool, targets)[order], epig_scores(pool[order], targets))


@pytest.mark.parametrize("target_chunk", [1, 2, 7, 16, 100])
@pytest.mark.parametrize("pool_chunk", [None, 1, 5])
def test_chunked_equals_unchunked(target_chunk, pool_chunk):
    pool = random_log_probs(23, 6, 4, seed=14)
    targets = random_log_probs(16, 6, 4, seed=15)
    whole = epig_scores(pool, targets)
    chunked = epig_scores(pool, targets, target_chunk=target_chunk, pool_chunk=pool_chunk)
    assert torch.allclose(chunked, whole, rtol=0, atol=1e-13)


def test_the_default_chunks_bound_the_joint(monkeypatch):
    # A tiny budget forces one target and one pool row per joint; the result must not change.
    pool = random_log_probs(11, 4, 5, seed=16)
    targets = random_log_probs(6, 4, 5, seed=17)
    whole = epig_scores(pool, targets)
    monkeypatch.setattr(epig_module, "DEFAULT_JOINT_BYTES", 5 * 5 * 8)
    assert torch.allclose(epig_scores(pool, targets), whole, rtol=0, atol=1e-13)


def test_score_function_equals_epig_scores_chunk_by_chunk():
    pool = random_log_probs(40, 5, 3, seed=18)
    targets = random_log_probs(7, 5, 3, seed=19)
    score = epig_score_function(targets)
    by_chunks = torch.cat([score(pool[i : i + 9]) for i in range(0, 40, 9)])
    assert torch.allclose(by_chunks, epig_scores(pool, targets), rtol=0, atol=1e-13)
    assert score(pool[:0]).shape == (0,)


# ----------------------------------------------------------------------------------- errors
def test_mismatched_k_or_c_names_both_shapes():
    targets = random_log_probs(3, 5, 3, seed=20)
    with pytest.raises(ScoreInputError, match=r"\(4, 6, 3\) and \(3, 5, 3\)"):
        epig_scores(random_log_probs(4, 6, 3, seed=21), targets)
    with pytest.raises(ValueError, match=r"same K .* and C"):
        epig_scores(random_log_probs(4, 5, 4, seed=22), targets)
    with pytest.raises(ValueError, match=r"\(4, 6, 3\)"):
        epig_score_function(targets)(random_log_probs(4, 6, 3, seed=21))


def test_bad_inputs_are_refused():
    good = random_log_probs(4, 5, 3, seed=23)
    with pytest.raises(ValueError, match="3 dimensions"):
        epig_scores(good[0], good)
    with pytest.raises(ValueError, match="floating point"):
        epig_scores(torch.zeros(4, 5, 3, dtype=torch.long), good)
    with pytest.raises(ValueError, match="at least one target"):
        epig_scores(good, good[:0])
    with pytest.raises(ValueError, match="target_chunk"):
        epig_scores(good, good, target_chunk=0)
    with pytest.raises(ValueError, match="pool_chunk"):
        epig_scores(good, good, pool_chunk=True)


def test_nan_and_plus_inf_are_refused_with_their_index():
    good = random_log_probs(4, 5, 3, seed=24)
    bad = good.clone()
    bad[2, 1, 0] = math.nan
    with pytest.raises(ValueError, match=r"log_probs_N_K_C contains NaN .* index 2"):
        epig_scores(bad, good)
    with pytest.raises(ValueError, match=r"log_probs_T_K_C contains NaN .* index 2"):
        epig_score_function(bad)
    bad[2, 1, 0] = math.inf
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        epig_scores(good, bad)


# ------------------------------------------------------------------------------- target ids
IDS = [f"img-{i:05d}" for i in range(1000)]


def test_target_ids_are_the_smallest_hashes_in_order():
    got = target_ids(7, IDS, 25)
    hashes = id_hashes(target_seed(7), IDS)
    expected = [IDS[i] for i in np.argsort(hashes, kind="stable")[:25]]
    assert got == expected
    assert len(set(got)) == 25


def test_target_ids_do_not_depend_on_order_or_chunking():
    expected = target_ids(3, IDS, 40)
    shuffled = IDS[:]
    random.Random(0).shuffle(shuffled)
    assert target_ids(3, shuffled, 40) == expected
    assert target_ids(3, iter(shuffled), 40) == expected  # a one-pass generator of ids
    for size in (1, 7, 39, 40, 41, 333, 5000):
        chunks = [shuffled[i : i + size] for i in range(0, len(shuffled), size)]
        assert target_ids(3, iter(chunks), 40) == expected
    tuples = [tuple(shuffled[:500]), np.array(shuffled[500:])]
    got = target_ids(3, tuples, 40)
    assert got == expected and all(type(i) is str for i in got)


def test_target_ids_count_repeats_once():
    assert target_ids(3, [IDS, IDS[:100], IDS[::-1]], 40) == target_ids(3, IDS, 40)
    assert sorted(target_ids(3, IDS[:10] * 3, 50)) == sorted(IDS[:10])


def test_target_ids_depend_on_the_seed_but_not_as_the_selection_noise_does():
    assert target_ids(1, IDS, 20) != target_ids(2, IDS, 20)
    assert target_ids(1, IDS, 20) == target_ids(1, IDS, 20)
    # The round seed's own hashes (sharded selection's noise) give a different draw.
    raw = [IDS[i] for i in np.argsort(id_hashes(1, IDS))[:20]]
    assert target_ids(1, IDS, 20) != raw
    assert target_seed(1) == target_seed(np.int64(1)) and 0 <= target_seed(1) < 2**128


def test_target_ids_small_pools_and_zero():
    assert sorted(target_ids(0, IDS[:5], 100)) == IDS[:5]
    assert target_ids(0, IDS, 0) == []
    assert target_ids(0, [], 5) == []
    assert target_ids(0, [[], IDS[:3], []], 5) == target_ids(0, IDS[:3], 5)


def test_target_ids_errors():
    with pytest.raises(ValueError, match="count"):
        target_ids(0, IDS, -1)
    with pytest.raises(ValueError, match="count"):
        target_ids(0, IDS, 2.0)
    with pytest.raises(ValueError, match="seed"):
        target_ids("0", IDS, 2)
    with pytest.raises(ValueError, match="string"):
        target_ids(0, "img-1", 2)
    with pytest.raises(ValueError, match="int"):
        target_ids(0, [3, 4], 2)
    with pytest.raises(ValueError, match="str"):
        target_ids(0, [["a", 3]], 2)
