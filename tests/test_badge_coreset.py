"""BADGE and CoreSet against brute-force references, gradient embeddings against autograd, and
the model/inference side that feeds them (embed, embed_pool)."""

from __future__ import annotations

import math

import pytest
import torch

from baldflow.acquisition import badge as badge_module
from baldflow.acquisition.badge import badge, gradient_embeddings, predicted_labels
from baldflow.acquisition.coreset import coreset
from baldflow.inference import embed_pool, predict_log_probs, score_pool
from baldflow.models import MODELS, build_model


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rows(tensor_N_D: torch.Tensor) -> list[list[float]]:
    return tensor_N_D.double().tolist()


def sq_dist(a: list[float], b: list[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------- brute-force references


def brute_coreset(features_N_D, batch_size, labeled_L_D=None) -> list[int]:
    points = rows(features_N_D)
    centers = rows(labeled_L_D) if labeled_L_D is not None else []
    chosen: list[int] = []
    for _ in range(min(batch_size, len(points))):
        best, best_d = -1, -math.inf
        for i, p in enumerate(points):
            if i in chosen:
                continue
            if centers:
                d = min(sq_dist(p, c) for c in centers)
            else:
                mean = [sum(col) / len(points) for col in zip(*points, strict=True)]
                d = sq_dist(p, mean)
            if d > best_d:  # strict: ties keep the lowest index
                best, best_d = i, d
        chosen.append(best)
        centers.append(points[best])
    return chosen


def brute_badge(embeddings_N_E, batch_size, generator):
    """(picks, full D^2 probability vector of each step after the first)."""
    points = rows(embeddings_N_E)
    norms = [sum(x * x for x in p) for p in points]
    chosen = [max(range(len(points)), key=lambda i: (norms[i], -i))]
    laws = []
    while len(chosen) < min(batch_size, len(points)):
        weights = [
            0.0 if i in chosen else min(sq_dist(p, points[c]) for c in chosen)
            for i, p in enumerate(points)
        ]
        total = sum(weights)
        laws.append([w / total for w in weights])
        u = torch.rand(1, generator=generator, dtype=torch.float64).item()
        running, threshold = 0.0, u * total
        for i, w in enumerate(weights):
            running += w
            if running > threshold:
                chosen.append(i)
                break
    return chosen, laws


# ---------------------------------------------------------------- coreset


@pytest.mark.parametrize("seed", range(5))
def test_coreset_matches_brute_force_with_and_without_labeled(seed):
    g = seeded(seed)
    features_N_D = torch.randn(40, 5, generator=g)
    labeled_L_D = torch.randn(7, 5, generator=g)
    assert coreset(features_N_D, 8, labeled_L_D).tolist() == brute_coreset(
        features_N_D, 8, labeled_L_D
    )
    assert coreset(features_N_D, 8).tolist() == brute_coreset(features_N_D, 8)


def test_coreset_ties_go_to_the_lowest_index_and_duplicates_come_last():
    # Integer coordinates: every distance is exact, so the ties are real ties.
    features_N_D = torch.tensor([[0.0, 0], [2, 0], [-2, 0], [0, 2], [0, 0], [2, 0]])
    labeled_L_D = torch.tensor([[0.0, 0]])
    picks = coreset(features_N_D, 6, labeled_L_D).tolist()
    # Rows 1, 2, 3 are all at distance 2 from the origin: lowest first (row 1), then row 2 is
    # farthest from {origin, row 1}; then 3; the exact duplicates 0, 4, 5 go last, lowest first.
    assert picks == [1, 2, 3, 0, 4, 5]
    assert picks == brute_coreset(features_N_D, 6, labeled_L_D)
    # No labeled set: the first pick is the farthest from the mean (ties: lowest index).
    assert coreset(torch.tensor([[1.0], [-1.0], [0.0]]), 1).tolist() == [0]


def test_coreset_returns_everything_when_the_batch_exceeds_the_pool():
    features_N_D = torch.randn(5, 3, generator=seeded(0))
    picks = coreset(features_N_D, 50)
    assert picks.dtype == torch.long and sorted(picks.tolist()) == list(range(5))
    assert coreset(torch.empty(0, 3), 2).tolist() == []
    assert coreset(features_N_D, 2, torch.empty(0, 3)).tolist() == brute_coreset(features_N_D, 2)


def test_coreset_labeled_distances_are_blocked_without_changing_results(monkeypatch):
    from baldflow.acquisition import coreset as coreset_module

    g = seeded(7)
    features_N_D, labeled_L_D = torch.randn(300, 4, generator=g), torch.randn(50, 4, generator=g)
    expected = coreset(features_N_D, 10, labeled_L_D)
    monkeypatch.setattr(coreset_module, "BLOCK_ELEMENTS", 7)
    monkeypatch.setattr(badge_module, "DISTANCE_BLOCK_ELEMENTS", 13)
    assert torch.equal(coreset(features_N_D, 10, labeled_L_D), expected)


# ---------------------------------------------------------------- badge


@pytest.mark.parametrize("seed", range(5))
def test_badge_matches_brute_force_picks_and_d2_laws(seed, monkeypatch):
    embeddings_N_E = torch.randn(30, 4, generator=seeded(100 + seed))
    embeddings_N_E[7] = embeddings_N_E[3]  # a duplicate: zero weight once row 3 is chosen
    seen_laws = []
    real_pick = badge_module.d2_pick

    def recording_pick(weights_N, u):
        seen_laws.append((weights_N / weights_N.sum()).tolist())
        return real_pick(weights_N, u)

    monkeypatch.setattr(badge_module, "d2_pick", recording_pick)
    picks, probabilities = badge(embeddings_N_E, 12, seeded(seed), return_probabilities=True)
    expected_picks, expected_laws = brute_badge(embeddings_N_E, 12, seeded(seed))
    assert picks.tolist() == expected_picks
    assert len(seen_laws) == len(expected_laws) == 11
    for law, expected in zip(seen_laws, expected_laws, strict=True):
        assert law == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert probabilities[0] == 1.0
    for step, pick in enumerate(expected_picks[1:]):
        assert probabilities[step + 1].item() == pytest.approx(expected_laws[step][pick], rel=1e-12)


def test_badge_second_pick_follows_the_d2_law():
    # Row 0 has the largest norm, so it is always first; row 4 duplicates it and must never be
    # second; the others are drawn in proportion to their squared distance to row 0.
    embeddings_N_E = torch.tensor([[3.0, 0], [2, 0], [0, 0], [0, 2], [3, 0], [-1, 0]])
    d2 = torch.tensor([0.0, 1, 9, 13, 0, 16])
    law = d2 / d2.sum()
    draws = 4000
    counts = torch.zeros(6)
    for seed in range(draws):
        picks = badge(embeddings_N_E, 2, seeded(seed))
        assert picks[0] == 0
        counts[picks[1]] += 1
    assert counts[0] == 0 and counts[4] == 0
    frequencies = counts / draws
    sigma = (law * (1 - law) / draws).sqrt()
    assert bool(((frequencies - law).abs() <= 4 * sigma + 1e-12).all()), (frequencies, law)


def test_badge_first_pick_ties_and_uniform_fallback_when_everything_coincides():
    same_N_E = torch.ones(5, 3)
    picks, probabilities = badge(same_N_E, 5, seeded(0), return_probabilities=True)
    assert picks[0] == 0 and sorted(picks.tolist()) == list(range(5))
    assert probabilities.tolist() == pytest.approx([1, 1 / 4, 1 / 3, 1 / 2, 1])
    # Uniform: over many seeds every remaining row is the second pick about equally often.
    counts = torch.bincount(
        torch.stack([badge(same_N_E, 2, seeded(s))[1] for s in range(800)]), minlength=5
    )
    assert counts[0] == 0 and bool((counts[1:] > 140).all()), counts
    # A duplicate set with one distinct row: the distinct row is drawn before any duplicate.
    mixed_N_E = torch.tensor([[1.0], [1.0], [1.0], [0.5]])
    assert badge(mixed_N_E, 2, seeded(3)).tolist() == [0, 3]


def test_badge_returns_everything_when_the_batch_exceeds_the_pool_and_chunking_is_invisible(
    monkeypatch,
):
    embeddings_N_E = torch.randn(50, 6, generator=seeded(5))
    picks = badge(embeddings_N_E, 80, seeded(1))
    assert picks.dtype == torch.long and sorted(picks.tolist()) == list(range(50))
    expected = badge(embeddings_N_E, 10, seeded(2))
    monkeypatch.setattr(badge_module, "DISTANCE_BLOCK_ELEMENTS", 7)
    assert torch.equal(badge(embeddings_N_E, 10, seeded(2)), expected)
    assert badge(torch.empty(0, 4), 3, seeded(0)).tolist() == []


# ---------------------------------------------------------------- gradient embeddings


def test_gradient_embedding_is_the_last_layer_gradient_at_the_predicted_label():
    model = build_model("mlp", (1, 4, 4), 5, seed=0, hidden=8).eval()
    x = torch.randn(6, 1, 4, 4, generator=seeded(0))
    features_N_D = model.embed(x).double()
    probs_N_C = model(x, 0)[:, 0].exp().detach().double()
    embeddings_N_E = gradient_embeddings(features_N_D, probs_N_C)
    assert embeddings_N_E.shape == (6, 5 * 8)
    last = model.last_linear()
    for n in range(6):
        model.zero_grad()
        log_probs_C = model(x[n : n + 1], 0)[0, 0]
        label = int(log_probs_C.argmax())
        torch.nn.functional.nll_loss(log_probs_C[None], torch.tensor([label])).backward()
        torch.testing.assert_close(
            embeddings_N_E[n], last.weight.grad.flatten().double(), rtol=1e-5, atol=1e-6
        )


def test_predicted_label_ties_go_to_the_lowest_class():
    probs_N_C = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.1, 0.45, 0.45, 0.0], [0, 0, 0, 1.0]])
    assert predicted_labels(probs_N_C).tolist() == [0, 1, 3]
    features_N_D = torch.tensor([[2.0], [1.0], [1.0]])
    embeddings_N_E = gradient_embeddings(features_N_D, probs_N_C.float())
    assert embeddings_N_E[0].tolist() == pytest.approx([-1.5, 0.5, 0.5, 0.5])
    assert embeddings_N_E[1].tolist() == pytest.approx([0.1, -0.55, 0.45, 0.0])


def test_invalid_inputs_are_clear_value_errors():
    good = torch.randn(4, 3)
    probs = torch.full((4, 2), 0.5)
    nan = good.clone()
    nan[2, 1] = float("nan")
    with pytest.raises(ValueError, match="batch_size"):
        badge(good, 0, seeded(0))
    with pytest.raises(ValueError, match="batch_size"):
        coreset(good, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="row 2"):
        coreset(nan, 1)
    with pytest.raises(ValueError, match="NaN"):
        badge(nan, 1, seeded(0))
    with pytest.raises(ValueError, match="2-D"):
        badge(torch.randn(4), 1, seeded(0))
    with pytest.raises(ValueError, match="generator"):
        badge(good, 1, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same embedding"):
        coreset(good, 1, torch.randn(2, 5))
    with pytest.raises(ValueError, match="NaN"):
        coreset(good, 1, nan)
    with pytest.raises(ValueError, match="rows"):
        gradient_embeddings(good, probs[:3])
    with pytest.raises(ValueError, match="sum to 1"):
        gradient_embeddings(good, torch.full((4, 2), 0.2))
    with pytest.raises(ValueError, match="log-probs"):
        gradient_embeddings(good, probs.log())
    with pytest.raises(ValueError, match="NaN"):
        gradient_embeddings(nan, probs)


# ---------------------------------------------------------------- model and inference side


@pytest.mark.parametrize("name", sorted(MODELS))
def test_embed_is_the_input_of_the_last_linear_layer_of_the_dropout_off_network(name):
    model = build_model(name, (3, 16, 16), 7, seed=0).train()
    x = torch.randn(3, 3, 16, 16, generator=seeded(1))
    features_N_D = model.embed(x)
    assert features_N_D.shape == (3, model.last_linear().in_features)
    assert not features_N_D.requires_grad and model.training  # mode restored
    model.eval()
    with torch.no_grad():
        logits_N_C = model.last_linear()(features_N_D)
        torch.testing.assert_close(
            torch.log_softmax(logits_N_C, -1), model(x, 0)[:, 0], rtol=1e-5, atol=1e-5
        )


def test_embed_pool_probs_are_the_scoring_passes_mc_average():
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    x = torch.randn(45, 1, 8, 8, generator=seeded(0))
    generator = seeded(4)
    features_N_D, probs_N_C = embed_pool(model, x, 6, generator, chunk_size=8)
    assert features_N_D.dtype == torch.float32 and features_N_D.shape == (45, 128)
    assert probs_N_C.dtype == torch.float64 and probs_N_C.shape == (45, 10)
    twin = seeded(4)
    log_probs_N_K_C = predict_log_probs(model, x, 6, twin, chunk_size=8)
    assert torch.equal(probs_N_C, log_probs_N_K_C.double().exp().mean(1))
    # Same draws from the generator as a scoring pass: both leave it in the same state.
    probe = seeded(4)
    score_pool(model, x, "bald", 6, probe)
    assert torch.equal(generator.get_state(), probe.get_state())
    assert torch.equal(generator.get_state(), twin.get_state())
    torch.testing.assert_close(features_N_D, model.embed(x), rtol=1e-5, atol=1e-6)
    other_features, other_probs = embed_pool(model, x, 6, seeded(4), chunk_size=500)
    torch.testing.assert_close(other_probs, probs_N_C, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(other_features, features_N_D, rtol=1e-5, atol=1e-6)
    # K = 0: the deterministic predictive; empty pools keep their shapes.
    _, probs0 = embed_pool(model, x, 0, seeded(0))
    torch.testing.assert_close(probs0, model.eval()(x, 0)[:, 0].detach().double().exp())
    empty_features, empty_probs = embed_pool(model, x[:0], 6, seeded(0))
    assert empty_features.shape == (0, 128) and empty_probs.shape == (0, 10)
    ids = torch.tensor([44, 3, 3])
    _, some_probs = embed_pool(model, x, 6, seeded(4), indices=ids)
    torch.testing.assert_close(some_probs, probs_N_C[ids], rtol=1e-5, atol=1e-8)
