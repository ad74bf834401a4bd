"""Reading saved model weights (a state_dict) back, on any machine."""

from __future__ import annotations

from pathlib import Path

import torch


class WeightsError(ValueError):
    """A weights file is missing or is not a plain state_dict of tensors."""


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
