"""A committed round's model served: the MLflow pyfunc that predicts exactly what the round's
scoring pass computed (same weights, same K consistent dropout masks).

It sits beside baldflow.inference, whose prediction it serves; baldflow.workspace.registry
stores and registers it without importing it (its code file names this module's RoundModel,
which MLflow imports when it loads a registered version).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import mlflow.pyfunc


class RoundModelInputError(ValueError):
    """Inputs given to a round model do not have the shape its network takes."""


def as_inputs(model_input: Any, input_shape: tuple[int, ...]) -> Any:
    """A float32 tensor [N, *input_shape] from N rows of flattened features (a DataFrame,
    array or tensor), or from inputs already in the network's shape."""
    import numpy as np
    import torch

    if hasattr(model_input, "to_numpy"):
        model_input = model_input.to_numpy()
    x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
    features = int(np.prod(input_shape))
    if x.ndim == 2 and x.shape[1] == features:
        return x.reshape(x.shape[0], *input_shape)
    if tuple(x.shape[1:]) == tuple(input_shape):
        return x
    raise RoundModelInputError(
        f"round model inputs must be [N, {features}] flattened features or "
        f"[N, {', '.join(map(str, input_shape))}], got shape {tuple(x.shape)}"
    )


def mc_predict(model: Any, x: Any, seed: int, mc_samples: int) -> tuple[Any, Any]:
    """(probs_N_C, bald_N) in float64: the MC-averaged predictive and BALD of each row, under
    the K = `mc_samples` masks of the round's scoring pass (seeded with the round seed `seed`,
    drawn as baldflow.compute.scoring.score_pool draws them). The masks are redrawn from the
    seed on every call, so any call, on any subset of rows, in any chunking, gives each row the
    same numbers."""
    from baldflow.acquisition.scores import bald
    from baldflow.inference import predict_log_probs
    from baldflow.seeds import STREAM_SCORE, generator_for

    generator = generator_for(seed, STREAM_SCORE)
    log_probs_N_K_C = predict_log_probs(model, x, mc_samples, generator)
    probs_N_C = log_probs_N_K_C.double().exp().mean(1)
    return probs_N_C, bald(log_probs_N_K_C)


def prediction_frame(probs_N_C: Any, bald_N: Any) -> Any:
    """Columns prob_0..prob_{C-1} and bald, one row per input."""
    import pandas as pd

    columns = {f"prob_{c}": probs_N_C[:, c].numpy() for c in range(probs_N_C.shape[1])}
    return pd.DataFrame({**columns, "bald": bald_N.numpy()})


class RoundModel(mlflow.pyfunc.PythonModel):
    """A round's MC dropout network as an MLflow pyfunc.

    Input: N rows of float32 features, flattened (a DataFrame or array of shape [N, F]) or in
    the network's input shape. Output: a DataFrame with the MC-averaged class probabilities
    `prob_0..prob_{C-1}` and the `bald` score of each row, computed with the K consistent masks
    of the round's scoring pass: deterministic, and equal to what the round computed.

    Its artifacts are those baldflow.workspace.registry writes: `spec` and `state_dict` (the
    network) and `scoring` (a JSON object with the round's `seed` and `mc_samples`).
    """

    def load_context(self, context: Any) -> None:
        from baldflow.models.building import rebuild_model

        artifacts = context.artifacts
        # Registering refused any round whose files give no network (registry.RegistryError).
        self.network = rebuild_model(artifacts["spec"], artifacts["state_dict"])
        scoring = json.loads(Path(artifacts["scoring"]).read_text())
        self.seed = int(scoring["seed"])
        self.mc_samples = int(scoring["mc_samples"])
        # Predicting sets the masks on the shared network: one request at a time.
        self._lock = threading.Lock()

    # MLflow derives checks from predict's type hints and warns (on import and on every save)
    # when it cannot; the explicit signature already checks the inputs, so that path is off
    # and predict is unannotated.
    _skip_type_hint_validation = True

    def predict(self, context, model_input, params=None):
        x = as_inputs(model_input, tuple(self.network.spec["input_shape"]))
        with self._lock:
            probs_N_C, bald_N = mc_predict(self.network, x, self.seed, self.mc_samples)
        return prediction_frame(probs_N_C, bald_N)
