"""Batch-quality evidence against brute-force enumeration of every label configuration."""

import functools
import itertools
import math

import helpers
import pytest
import torch

from baldflow.acquisition.batchbald import batchbald
from baldflow.acquisition.quality import (
    batch_overlap,
    batch_quality,
    joint_mutual_information,
    mi_gap,
    near_duplicate_pairs,
)
from baldflow.acquisition.scores import ScoreInputError, bald
from baldflow.data.repeat import repeat_id, split_repeat_id

torch.set_num_threads(1)


# Posterior samples that agree more or less from point to point, as a trained model's do.
random_log_probs = functools.partial(helpers.random_log_probs, sharpness=2.0)


def brute_force_joint_mi(log_probs_B_K_C) -> float:
    """H[y_1..y_B] - sum_i E_w H[y_i | w] with plain Python loops over all C^B configurations."""
    probs = log_probs_B_K_C.exp().tolist()
    B, K, C = len(probs), len(probs[0]), len(probs[0][0])
    joint_entropy = 0.0
    for config in itertools.product(range(C), repeat=B):
        p = 0.0
        for k in range(K):
            product = 1.0
            for i, c in enumerate(config):
                product *= probs[i][k][c]
            p += product / K
        if p > 0:
            joint_entropy -= p * math.log(p)
    conditional = 0.0
    for i in range(B):
        for k in range(K):
            conditional -= sum(q * math.log(q) for q in probs[i][k] if q > 0) / K
    return joint_entropy - conditional


def one_hot_log_probs(labels_B_K, C):
    """Each posterior sample k is certain of label labels_B_K[i][k] for point i."""
    labels = torch.tensor(labels_B_K)
    return torch.log(torch.nn.functional.one_hot(labels, C).to(torch.float64))


@pytest.mark.parametrize(("B", "K", "C", "seed"), [(2, 3, 2, 0), (3, 5, 3, 1), (4, 4, 3, 2)])
def test_joint_mi_matches_brute_force(B, K, C, seed):
    log_probs = random_log_probs(B, K, C, seed)
    expected = brute_force_joint_mi(log_probs)
    assert joint_mutual_information(log_probs) == pytest.approx(expected, abs=1e-10)


def test_joint_mi_exact_with_zero_probabilities():
    log_probs = random_log_probs(3, 4, 3, 7)
    log_probs[0, :, 2] = -torch.inf
    log_probs[1, 1, 0] = -torch.inf
    log_probs = torch.log_softmax(log_probs, -1)
    expected = brute_force_joint_mi(log_probs)
    assert joint_mutual_information(log_probs) == pytest.approx(expected, abs=1e-10)


def test_last_point_is_never_enumerated():
    """C^B = 27 > num_samples = 9 = C^(B-1): still exact, the last labels are summed."""
    log_probs = random_log_probs(3, 5, 3, 3)
    quality = batch_quality(log_probs, num_samples=9)
    assert quality["batch_joint_mi_exact"] is True
    assert quality["batch_joint_mi"] == pytest.approx(brute_force_joint_mi(log_probs), abs=1e-10)
    assert batch_quality(log_probs, num_samples=8)["batch_joint_mi_exact"] is False


def test_equals_sum_of_batchbald_gains():
    """For BatchBALD's own batch the joint MI is the sum of its greedy gains."""
    log_probs = random_log_probs(12, 6, 3, 4)
    selection = batchbald(log_probs, 4, return_details=True)
    joint = joint_mutual_information(log_probs[selection.indices])
    assert joint == pytest.approx(float(selection.gains.sum()), abs=1e-10)


def test_one_point_is_bald_and_empty_batch_is_zero():
    log_probs = random_log_probs(1, 7, 4, 5)
    quality = batch_quality(log_probs)
    assert quality["batch_joint_mi"] == pytest.approx(float(bald(log_probs)[0]), abs=1e-12)
    assert quality["batch_redundancy"] == pytest.approx(0.0, abs=1e-12)
    assert quality["batch_redundancy_ratio"] == pytest.approx(1.0, abs=1e-10)

    empty = batch_quality(torch.empty(0, 7, 4), sample_ids=[], labels=[])
    assert empty == {
        "batch_joint_mi": 0.0,
        "batch_joint_mi_exact": True,
        "batch_bald_sum": 0.0,
        "batch_redundancy": 0.0,
        "batch_redundancy_ratio": 1.0,
        "class_entropy": 0.0,
        "near_duplicate_pairs": 0,
    }


def test_identical_points_are_redundant():
    point = one_hot_log_probs([[0, 0, 1, 1]], 2)
    quality = batch_quality(torch.cat([point, point]))
    assert quality["batch_bald_sum"] == pytest.approx(2 * math.log(2))
    assert quality["batch_joint_mi"] == pytest.approx(math.log(2))
    assert quality["batch_redundancy"] > 0.5
    assert quality["batch_redundancy_ratio"] == pytest.approx(0.5)

    soft = random_log_probs(1, 8, 3, 6)
    quality = batch_quality(soft.expand(3, -1, -1))
    assert quality["batch_redundancy"] > 0
    assert quality["batch_redundancy_ratio"] < 1


def test_independent_points_are_not_redundant():
    """Label of point 1 and of point 2 vary independently across the K samples."""
    log_probs = one_hot_log_probs([[0, 0, 1, 1], [0, 1, 0, 1]], 2)
    quality = batch_quality(log_probs)
    assert quality["batch_joint_mi"] == pytest.approx(2 * math.log(2))
    assert quality["batch_redundancy"] == pytest.approx(0.0, abs=1e-12)
    assert quality["batch_redundancy_ratio"] == pytest.approx(1.0)


def test_certain_batch_has_ratio_one():
    log_probs = one_hot_log_probs([[1, 1, 1], [0, 0, 0]], 3)
    quality = batch_quality(log_probs)
    assert quality["batch_bald_sum"] == 0.0
    assert quality["batch_redundancy_ratio"] == 1.0
    assert not math.isnan(quality["batch_redundancy_ratio"])


def test_sampled_estimate_is_close_to_exact():
    log_probs = random_log_probs(8, 10, 3, 8)
    exact = batch_quality(log_probs)  # 3^7 = 2187 configurations of the prefix: exact
    assert exact["batch_joint_mi_exact"] is True
    for num_samples in (2000, 20):
        generator = torch.Generator().manual_seed(0)
        sampled = batch_quality(log_probs, num_samples=num_samples, generator=generator)
        assert sampled["batch_joint_mi_exact"] is False
        tolerance = 0.01 if num_samples == 2000 else 0.15
        assert sampled["batch_joint_mi"] == pytest.approx(exact["batch_joint_mi"], abs=tolerance)
    # The same seed gives the same estimate.
    again = [
        joint_mutual_information(
            log_probs, num_samples=50, generator=torch.Generator().manual_seed(3)
        )
        for _ in range(2)
    ]
    assert again[0] == again[1]


def test_large_batch_is_sampled_and_sane():
    log_probs = random_log_probs(10, 20, 10, 9)
    quality = batch_quality(log_probs, generator=torch.Generator().manual_seed(0))
    assert quality["batch_joint_mi_exact"] is False
    assert 0 < quality["batch_joint_mi"] <= quality["batch_bald_sum"] + 0.05
    assert math.isfinite(quality["batch_redundancy_ratio"])


def test_near_duplicate_pairs_with_repeat_ids():
    ids = [repeat_id("7", 0), repeat_id("7", 1), repeat_id("7", 2), "8", repeat_id("8", 3), "9"]
    log_probs = random_log_probs(len(ids), 3, 2, 10)

    def origin(sample_id):
        return split_repeat_id(sample_id)[0]

    quality = batch_quality(log_probs, sample_ids=ids, duplicate_key=origin)
    assert quality["near_duplicate_pairs"] == 3 + 1  # C(3, 2) copies of 7, one pair of 8
    assert batch_quality(log_probs, sample_ids=ids)["near_duplicate_pairs"] == 0
    assert near_duplicate_pairs(["a", "a", "b"]) == 1
    assert near_duplicate_pairs(["7~r1", "7~r2"], lambda sid: sid.split("~")[0]) == 1
    assert "near_duplicate_pairs" not in batch_quality(log_probs)


def test_class_entropy():
    log_probs = random_log_probs(4, 3, 5, 11)
    assert batch_quality(log_probs, labels=[0, 1, 2, 3])["class_entropy"] == pytest.approx(
        math.log(4)
    )
    assert batch_quality(log_probs, labels=torch.tensor([2, 2, 2, 2]))["class_entropy"] == 0.0
    halves = batch_quality(log_probs, labels=["cat", "dog", "cat", "dog"])["class_entropy"]
    assert halves == pytest.approx(math.log(2))
    predicted = one_hot_log_probs([[0, 0], [0, 0], [1, 1], [2, 2]], 3)
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert batch_quality(predicted)["class_entropy"] == pytest.approx(expected)


def test_overlap_and_gap():
    assert batch_overlap(["a", "b", "c", "d"], ["c", "d", "e", "f"]) == 0.5
    assert batch_overlap(["a", "b"], ["a", "b", "c", "d"]) == 0.5
    assert batch_overlap(["a", "b"], ["b", "a"]) == 1.0
    assert batch_overlap([], []) == 1.0
    assert batch_overlap(["a"], []) == 0.0
    assert mi_gap(1.5, 2.0) == pytest.approx(0.5)
    assert mi_gap(2.0, 1.5) == pytest.approx(-0.5)
    with pytest.raises(ValueError):
        mi_gap(float("nan"), 1.0)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(3, 4),
        torch.zeros(2, 3, 4, 1),
        torch.zeros(2, 0, 3),
        torch.zeros(2, 3, 4, dtype=torch.long),
        torch.full((2, 3, 4), float("nan")),
        torch.full((2, 3, 4), float("inf")),
    ],
)
def test_bad_log_probs(bad):
    with pytest.raises(ScoreInputError):
        joint_mutual_information(bad)
    with pytest.raises(ValueError):
        batch_quality(bad)


def test_bad_arguments():
    log_probs = random_log_probs(3, 4, 2, 12)
    with pytest.raises(ValueError, match="labels"):
        batch_quality(log_probs, labels=[0, 1])
    with pytest.raises(ValueError, match="NaN"):
        batch_quality(log_probs, labels=[0.0, float("nan"), 1.0])
    with pytest.raises(ValueError, match="sample_ids"):
        batch_quality(log_probs, sample_ids=["a"])
    with pytest.raises(ValueError, match="sample_ids"):
        batch_quality(log_probs, duplicate_key=str)
    with pytest.raises(ValueError, match="num_samples"):
        joint_mutual_information(log_probs, num_samples=0)
