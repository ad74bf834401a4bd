"""Reading saved model weights (a state_dict) back, on any machine, and rebuilding a network
from them and its spec."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


class WeightsError(ValueError):
    """A weights file is missing or is not a plain state_dict of tensors."""


# A saved network is two files: these are the names a round's MLflow run (model/), a
# registered round model and a sharded-scoring job all use, and rebuild_model reads.
WEIGHTS_FILE = "state_dict.pt"
SPEC_FILE = "spec.json"


def save_weights(state: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Save a state_dict atomically (a killed write must not leave half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(state), tmp)
    os.replace(tmp, path)
    return path


def save_model_files(
    directory: str | Path, state: Mapping[str, torch.Tensor], spec: Mapping[str, Any]
) -> Path:
    """Write a network as WEIGHTS_FILE + SPEC_FILE (build_model's arguments) in `directory`,
    the layout rebuild_model reads back."""
    from baldflow.common import atomic_write_text

    directory = Path(directory)
    save_weights(state, directory / WEIGHTS_FILE)
    atomic_write_text(directory / SPEC_FILE, json.dumps(dict(spec), indent=2))
    return directory


def load_weights(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """The state_dict saved at `path` with `torch.save`, its tensors on `device`.

    `map_location` makes weights saved on a GPU load on a machine without one (the batch may be
    labeled days later, elsewhere); `weights_only` refuses pickled code, so a weights file
    cannot run anything when it is read.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001 (torch raises pickle, runtime and zip errors)
        raise WeightsError(
            f"{path} is not a weights file torch can read safely: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state_dict of tensors")
    return state


class ModelRebuildError(ValueError):
    """A spec and weights that do not make a network (bad JSON, unknown model, other shapes)."""


def rebuild_model(spec_path: str | Path, weights_path: str | Path) -> torch.nn.Module:
    """The network `spec_path` (build_model's arguments as JSON) describes, with the weights
    at `weights_path`, in eval mode on the CPU. A missing spec file raises FileNotFoundError;
    anything else that keeps them from making a network raises ModelRebuildError."""
    from baldflow.models.zoo import ModelSpecError, build_model

    try:
        spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
        model = build_model(**spec)
        # WeightsError (missing or unsafe weights) is a ValueError; load_state_dict raises
        # RuntimeError for weights of another architecture.
        model.load_state_dict(load_weights(weights_path))
    except (ValueError, TypeError, RuntimeError, ModelSpecError) as error:
        raise ModelRebuildError(f"{type(error).__name__}: {error}") from error
    return model.eval()
