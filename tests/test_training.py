"""Training with early stopping, MC evaluation, and a sanity check of the whole model on digits."""

from __future__ import annotations

import math

import pytest
import torch

from baldflow.data import load_source
from baldflow.inference import predict_log_probs, score_pool
from baldflow.models import build_model
from baldflow.training import (
    FitResult,
    TrainConfig,
    TrainConfigError,
    evaluate,
    fit,
    resolve_device,
)


@pytest.fixture(scope="module")
def digits():
    return load_source("digits", seed=0)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_fit(digits, seed: int, **config):
    model = build_model("mlp", digits.input_shape, 10, seed=0)
    options = {"epoch_samples": 256, "max_epochs": 3, "eval_mc_samples": 4, **config}
    result = fit(
        model,
        digits.pool_x[:40],
        digits.pool_y[:40],
        digits.val_x[:60],
        digits.val_y[:60],
        TrainConfig(**options),
        seeded(seed),
    )
    return model, result


def test_trained_model_on_digits_is_accurate_and_more_uncertain_on_noise(digits):
    # The MLP: a tenth of the CNN's compute, so this stays a few seconds on two cores.
    model = build_model("mlp", digits.input_shape, digits.num_classes, seed=0)
    config = TrainConfig(epoch_samples=2048, max_epochs=12, patience=3)
    result = fit(model, digits.pool_x, digits.pool_y, digits.val_x, digits.val_y, config, seeded())
    test = evaluate(model, digits.test_x, digits.test_y, 20, seeded(1))
    assert test["accuracy"] >= 0.90, (test, result.history)
    assert 0 < test["nll"] < 0.5
    # Out-of-distribution inputs: Gaussian noise in the normalised input space.
    noise = torch.randn(len(digits.test_y), *digits.input_shape, generator=seeded(5))
    bald_test = score_pool(model, digits.test_x, "bald", 20, seeded(2))
    bald_noise = score_pool(model, noise, "bald", 20, seeded(2))
    assert bald_noise.mean() > 1.5 * bald_test.mean(), (bald_noise.mean(), bald_test.mean())


def test_fit_is_deterministic_for_a_seed(digits):
    model_a, result_a = small_fit(digits, seed=3)
    model_b, result_b = small_fit(digits, seed=3)
    model_c, _ = small_fit(digits, seed=4)
    assert result_a.history == result_b.history
    state_b, state_c = model_b.state_dict(), model_c.state_dict()
    for key, value in model_a.state_dict().items():
        assert torch.equal(value, state_b[key]), key
    assert not all(torch.equal(v, state_c[k]) for k, v in model_a.state_dict().items())


def test_early_stopping_restores_the_best_weights(digits):
    # Deterministic validation (eval_mc_samples=0) so the restored weights can be re-checked.
    model, result = small_fit(digits, seed=0, max_epochs=30, patience=2, eval_mc_samples=0)
    accuracies = [row["val_accuracy"] for row in result.history]
    assert isinstance(result, FitResult) and result.epochs == len(accuracies)
    assert result.best_val_accuracy == max(accuracies)
    assert accuracies[result.best_epoch - 1] == result.best_val_accuracy
    # Stopped `patience` epochs after the first epoch that reached the best accuracy.
    assert result.epochs == min(30, result.best_epoch + 2)
    again = evaluate(model, digits.val_x[:60], digits.val_y[:60], 0, seeded())
    assert again["accuracy"] == result.best_val_accuracy
    assert not model.training
    assert all(layer.train_generator is None for layer in model.dropout_layers())


def test_an_epoch_draws_epoch_samples_with_replacement_from_a_small_set(digits):
    model = build_model("mlp", digits.input_shape, 10, seed=0)
    seen = []
    model.prefix.register_forward_hook(
        lambda module, args, out: seen.append(args[0].shape[0]) if module.training else None
    )
    config = TrainConfig(epoch_samples=300, batch_size=64, max_epochs=2)
    empty_x, empty_y = digits.val_x[:0], digits.val_y[:0]
    result = fit(model, digits.pool_x[:20], digits.pool_y[:20], empty_x, empty_y, config, seeded())
    # 2 epochs x 300 draws from 20 labels, in batches of 64 (the last one of 44).
    assert sum(seen) == 600 and seen[:5] == [64] * 4 + [44]
    assert result.epochs == 2 and math.isnan(result.best_val_accuracy)
    # A labeled set larger than epoch_samples gets one shuffled pass per epoch instead.
    seen.clear()
    fit(model, digits.pool_x[:500], digits.pool_y[:500], empty_x, empty_y, config, seeded())
    assert sum(seen) == 1000


def test_evaluate_is_the_mc_predictive_accuracy_and_nll(digits):
    model, _ = small_fit(digits, seed=0)
    x, y = digits.test_x[:50], digits.test_y[:50]
    metrics = evaluate(model, x, y, 7, seeded(9), batch_size=16)
    log_probs_N_K_C = predict_log_probs(model, x, 7, seeded(9)).double()
    log_pbar_N_C = torch.logsumexp(log_probs_N_K_C, 1) - math.log(7)
    assert metrics["n"] == 50
    expected_accuracy = float((log_pbar_N_C.argmax(1) == y).double().mean())
    assert metrics["accuracy"] == pytest.approx(expected_accuracy)
    expected_nll = float(-log_pbar_N_C.gather(1, y[:, None]).mean())
    assert metrics["nll"] == pytest.approx(expected_nll, rel=1e-5)
    assert math.isnan(evaluate(model, x[:0], y[:0], 3, seeded())["accuracy"])


def test_train_config_errors_name_the_field():
    with pytest.raises(TrainConfigError, match="batch_size must be an integer >= 1, got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(TrainConfigError, match="training.learning_rate must be > 0"):
        TrainConfig(learning_rate=0.0)
    with pytest.raises(TrainConfigError, match="training.device 'gpu-ish'"):
        TrainConfig(device="gpu-ish")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(TrainConfigError, match="empty labeled set"):
        fit(
            build_model("mlp", (4,), 2),
            torch.zeros(0, 4),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, 4),
            torch.zeros(0, dtype=torch.long),
            TrainConfig(),
            seeded(),
        )
