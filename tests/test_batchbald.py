"""BatchBALD against a reference that enumerates every label configuration by brute force."""

import functools
import itertools
import math

import helpers
import pytest
import torch

from baldflow.acquisition.batchbald import batchbald
from baldflow.acquisition.scores import bald

# Posterior samples that agree more or less from point to point, as a trained model's do.
random_log_probs = functools.partial(helpers.random_log_probs, sharpness=2.0)


def joint_mutual_information(log_probs_N_K_C, indices) -> float:
    """I[y_1..y_n; w] = H[y_1..y_n] - sum_i E_w H[y_i | w], summing over all C^n configurations."""
    probs = log_probs_N_K_C.exp()[list(indices)]  # [n, K, C]
    n, K, C = probs.shape
    joint_entropy = 0.0
    for config in itertools.product(range(C), repeat=n):
        per_sample = torch.ones(K, dtype=torch.float64)
        for i, c in enumerate(config):
            per_sample = per_sample * probs[i, :, c]
        p = per_sample.mean().item()
        if p > 0:
            joint_entropy -= p * math.log(p)
    conditional = -(torch.special.xlogy(probs, probs)).sum((0, 2)).mean().item()
    return joint_entropy - conditional


def brute_force_greedy(log_probs_N_K_C, batch_size):
    chosen = []
    for _ in range(batch_size):
        candidates = [i for i in range(len(log_probs_N_K_C)) if i not in chosen]
        values = [joint_mutual_information(log_probs_N_K_C, chosen + [i]) for i in candidates]
        chosen.append(candidates[max(range(len(values)), key=values.__getitem__)])
    return chosen


@pytest.mark.parametrize("seed", range(4))
def test_exact_regime_matches_brute_force_greedy(seed):
    log_probs = random_log_probs(N=25, K=6, C=3, seed=seed)
    expected = brute_force_greedy(log_probs, 4)
    got = batchbald(log_probs, 4, num_samples=10_000, generator=torch.Generator().manual_seed(0))
    assert got.tolist() == expected


@pytest.mark.parametrize("seed", range(6))
def test_lazy_greedy_equals_plain_greedy_in_the_exact_regime(seed):
    log_probs = random_log_probs(N=400, K=10, C=4, seed=seed)
    kwargs = {"num_samples": 4**5, "max_memory_bytes": 2**20}
    lazy = batchbald(
        log_probs,
        6,
        lazy=True,
        generator=torch.Generator().manual_seed(1),
        return_details=True,
        **kwargs,
    )
    plain = batchbald(
        log_probs,
        6,
        lazy=False,
        generator=torch.Generator().manual_seed(1),
        return_details=True,
        **kwargs,
    )
    assert lazy.exact_steps == 6
    assert lazy.indices.tolist() == plain.indices.tolist()
    torch.testing.assert_close(lazy.gains, plain.gains)


def test_gains_add_up_to_the_joint_mutual_information_and_never_exceed_bald():
    log_probs = random_log_probs(N=30, K=5, C=3, seed=7)
    chosen = batchbald(
        log_probs, 4, return_details=True, generator=torch.Generator().manual_seed(0)
    )
    assert chosen.gains.sum().item() == pytest.approx(
        joint_mutual_information(log_probs, chosen.indices.tolist()), abs=1e-10
    )
    assert (chosen.gains <= bald(log_probs)[chosen.indices] + 1e-12).all()
    assert (chosen.gains[1:] <= chosen.gains[:-1] + 1e-12).all()  # submodular: gains shrink


def test_does_not_pick_a_duplicate_while_an_informative_point_remains():
    # Four posterior samples. Point A separates {w1, w2} from {w3, w4}; B separates {w1, w3}
    # from {w2, w4}, a little less sharply. Points 1 and 2 are exact copies of A.
    a = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]
    b = [[0.95, 0.05], [0.05, 0.95], [0.95, 0.05], [0.05, 0.95]]
    flat = [[0.5, 0.5]] * 4
    log_probs = torch.tensor([a, a, a, b, flat], dtype=torch.float64).log()
    top_bald = bald(log_probs).argsort(descending=True)[:2].tolist()
    assert top_bald == [0, 1]  # BALD alone takes the duplicate
    assert batchbald(log_probs, 2).tolist() == [0, 3]


def test_sampled_regime_agrees_with_the_exact_one():
    log_probs = random_log_probs(N=60, K=8, C=3, seed=11)
    exact = batchbald(
        log_probs,
        5,
        num_samples=3**5,
        return_details=True,
        generator=torch.Generator().manual_seed(0),
    )
    sampled = batchbald(
        log_probs,
        5,
        num_samples=60,
        return_details=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert exact.exact_steps == 5 and sampled.exact_steps < 5
    exact_value = joint_mutual_information(log_probs, exact.indices.tolist())
    sampled_value = joint_mutual_information(log_probs, sampled.indices.tolist())
    # The sampled batch is nearly as informative, and its estimated gains are close to the truth.
    assert sampled_value >= 0.97 * exact_value
    assert sampled.gains.sum().item() == pytest.approx(sampled_value, rel=0.05)


def test_same_generator_state_gives_the_same_batch_in_the_sampled_regime():
    log_probs = random_log_probs(N=200, K=8, C=5, seed=2)
    runs = [
        batchbald(log_probs, 6, num_samples=100, generator=torch.Generator().manual_seed(5))
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    assert len(set(runs[0].tolist())) == 6


def test_float32_input_and_tiny_memory_budget_work():
    log_probs = random_log_probs(N=50, K=6, C=4, seed=3)
    reference = batchbald(log_probs, 3, generator=torch.Generator().manual_seed(0))
    squeezed = batchbald(
        log_probs.float(), 3, max_memory_bytes=1, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(reference, squeezed)


def test_batch_larger_than_pool_and_bad_arguments():
    log_probs = random_log_probs(N=3, K=4, C=2, seed=0)
    assert sorted(batchbald(log_probs, 10).tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        batchbald(log_probs, 0)
    with pytest.raises(ValueError, match="num_samples"):
        batchbald(log_probs, 1, num_samples=0)
    broken = log_probs.clone()
    broken[1, 1, 1] = torch.nan
    with pytest.raises(ValueError, match="NaN"):
        batchbald(broken, 1)


def test_matches_batchbald_redux_when_installed():
    redux = pytest.importorskip("batchbald_redux.batchbald")
    log_probs = random_log_probs(N=300, K=10, C=4, seed=4)
    ours = batchbald(log_probs, 4, num_samples=10_000)
    theirs = redux.get_batchbald_batch(log_probs, 4, 10_000, dtype=torch.float64, device="cpu")
    assert ours.tolist() == list(theirs.indices)


def test_a_non_contiguous_view_gives_the_same_batch():
    samples_first = random_log_probs(N=60, K=6, C=3, seed=2).transpose(0, 1).contiguous()
    view = samples_first.transpose(0, 1)  # [N, K, C] again, laid out [K, N, C]
    assert not view.is_contiguous()
    for lazy in (True, False):
        got = batchbald(view, 5, generator=torch.Generator().manual_seed(0), lazy=lazy)
        want = batchbald(
            view.contiguous(), 5, generator=torch.Generator().manual_seed(0), lazy=lazy
        )
        assert got.tolist() == want.tolist()
