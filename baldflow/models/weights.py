"""Reading saved model weights (a state_dict) back, on any machine, and rebuilding a network
from them and its spec."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from baldflow.common import file_sha256


class WeightsError(ValueError):
    """A weights file is missing or is not a plain state_dict of tensors."""


# A saved network is two files: these are the names a round's MLflow run (model/), a
# registered round model and a sharded-scoring job all use, and building.rebuild_model reads.
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


PRETRAINED_SUFFIXES = (".pt", ".pth", ".safetensors")
# Checkpoints often wrap the state_dict with training state (optimizer, epoch) under one of these.
_CHECKPOINT_KEYS = ("state_dict", "model")


def _is_state_dict(value: object) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _refused_global(error: BaseException) -> str | None:
    """The class torch's weights_only unpickler refused, e.g. `__main__.Foo`."""
    match = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    return match.group(1) if match else None


def read_pretrained(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict on the CPU, sha256 hex of the file's bytes) of a pretrained weights file.

    `.pt`/`.pth`: read with `torch.load(weights_only=True)`, which refuses pickled objects that
    would run code. A checkpoint dict that is not itself a state_dict but holds one under exactly
    one of the keys "state_dict" or "model" is unwrapped (its other entries, such as optimizer
    state, are dropped). `.safetensors`: read with safetensors, a format that holds tensors only.
    The file is read once and the hash taken of the bytes that were loaded, so the hash always
    names the weights in use. Anything else raises WeightsError.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PRETRAINED_SUFFIXES:
        raise WeightsError(
            f"{path}: unsupported weights file type {suffix or '(no suffix)'!r}; accepted: "
            f"{', '.join(PRETRAINED_SUFFIXES)}"
        )
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if suffix == ".safetensors":
        from safetensors.torch import load as load_safetensors

        try:
            state: object = load_safetensors(data)
        except Exception as error:  # noqa: BLE001 (safetensors raises its own error types)
            first = str(error).splitlines()[0] if str(error) else ""
            raise WeightsError(
                f"{path} is not a readable safetensors file: {type(error).__name__}: {first}"
            ) from error
    else:
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 (torch raises pickle, runtime and zip errors)
            refused = _refused_global(error)
            if refused is not None:
                raise WeightsError(
                    f"{path} holds pickled Python objects ({refused}) that could run code when "
                    "loaded, so it is refused; save a plain state_dict "
                    "(torch.save(model.state_dict(), path)) or a .safetensors file"
                ) from error
            first = str(error).splitlines()[0] if str(error) else ""
            raise WeightsError(
                f"{path} is not a weights file torch can read safely: {type(error).__name__}: "
                f"{first}"
            ) from error
    if isinstance(state, Mapping) and not _is_state_dict(state):
        wrapped = [key for key in _CHECKPOINT_KEYS if key in state]
        if len(wrapped) == 1 and _is_state_dict(state[wrapped[0]]):
            state = state[wrapped[0]]
    if not _is_state_dict(state):
        what = type(state).__name__
        if isinstance(state, Mapping):
            bad = next(
                (
                    f"{k!r}: {type(v).__name__}"
                    for k, v in state.items()
                    if not (isinstance(k, str) and isinstance(v, torch.Tensor))
                ),
                "",
            )
            what = f"a {what} with a non-tensor entry ({bad})"
        else:
            what = f"a {what}"
        raise WeightsError(f"{path} holds {what}, not a state_dict of tensors")
    assert isinstance(state, Mapping)
    return (state if isinstance(state, dict) else dict(state)), digest


def _listed(names: list[str], cap: int = 5) -> str:
    more = f" (+{len(names) - cap} more)" if len(names) > cap else ""
    return ", ".join(names[:cap]) + more


def load_pretrained(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    path: str | Path,
    allow_missing_prefixes: tuple[str, ...] | list[str] = (),
) -> None:
    """Load `state` (read_pretrained's from `path`) into `module`, or raise a one-line
    WeightsError listing the missing keys, the unexpected keys and the shape mismatches.

    Keys under an entry of `allow_missing_prefixes` (a module name such as "fc", the layer
    replace_last_linear resized; "fc." works too) may be missing and, where their shape differs
    (the 1000-class classifier of an ImageNet file), are skipped and keep their fresh values.
    Nothing is loaded when there is an error.
    """

    def allowed(key: str) -> bool:
        return any(
            key.startswith(prefix if prefix.endswith(".") else prefix + ".") or key == prefix
            for prefix in allow_missing_prefixes
            if prefix
        )

    own = module.state_dict()
    missing = [key for key in own if key not in state and not allowed(key)]
    unexpected = [key for key in state if key not in own]
    mismatched: list[str] = []
    skipped: set[str] = set()
    for key, tensor in state.items():
        if key in own and tuple(tensor.shape) != tuple(own[key].shape):
            if allowed(key):
                skipped.add(key)
            else:
                mismatched.append(
                    f"{key} {list(tensor.shape)} in the file vs {list(own[key].shape)} in the model"
                )
    problems = []
    if missing:
        problems.append(f"missing keys {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listed(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_listed(mismatched)}")
    if problems:
        raise WeightsError(f"{path}: {'; '.join(problems)}")
    try:
        module.load_state_dict(
            {key: value for key, value in state.items() if key not in skipped}, strict=False
        )
    except RuntimeError as error:
        first = str(error).splitlines()[0] if str(error) else ""
        raise WeightsError(f"{path}: the weights do not load: {first}") from error


# The sha256 of each weights file read in this process, by what identifies its content on
# disk: a campaign records it with every round, and a large file is hashed only once.
_WEIGHTS_DIGESTS: dict[tuple, str] = {}


def weights_sha256(path: str | Path) -> str:
    """sha256 hex of a weights file; WeightsError when there is none. Remembered per file and
    its size, mtime and inode, so a replaced or rewritten file is hashed again."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _WEIGHTS_DIGESTS:
        _WEIGHTS_DIGESTS[key] = file_sha256(path)
    return _WEIGHTS_DIGESTS[key]
