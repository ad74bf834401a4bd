"""The model zoo: MC dropout networks selectable by name, built deterministically from a seed."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from baldflow.models.base import BayesianModule
from baldflow.models.dropout import ConsistentDropout, ConsistentDropout2d


class ModelSpecError(ValueError):
    """A model name or architecture parameter is invalid."""


def _check_image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ModelSpecError(
            f"model {name!r} needs input_shape (channels, height, width), got {input_shape}"
        )
    return input_shape  # type: ignore[return-value]


def cnn_padding(height: int, width: int) -> int:
    """Padding of both 5x5 convolutions: none (as in the BatchBALD CNN) when two valid conv +
    2x2 pool stages leave at least one pixel, 'same' padding for small images such as 8x8 digits."""
    side = min(height, width)
    if side >= 16:
        return 0
    if side >= 4:
        return 2
    raise ModelSpecError(f"cnn needs images of at least 4x4 pixels, got {height}x{width}")


def _conv_stage_size(size: int, padding: int) -> int:
    return (size + 2 * padding - 4) // 2


class MLP(BayesianModule):
    """Flatten, Linear, ReLU (prefix) | dropout, Linear, ReLU, dropout, Linear (stochastic head)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        dropout: float = 0.5,
        hidden: int = 256,
    ):
        super().__init__()
        if hidden < 1:
            raise ModelSpecError(f"mlp hidden must be >= 1, got {hidden}")
        self.spec = {
            "name": "mlp",
            "input_shape": tuple(input_shape),
            "num_classes": num_classes,
            "dropout": dropout,
            "hidden": hidden,
        }
        features = 1
        for size in input_shape:
            features *= size
        self.prefix = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU())
        self.head = nn.Sequential(
            ConsistentDropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            ConsistentDropout(dropout),
            nn.Linear(hidden, num_classes),
        )


class CNN(BayesianModule):
    """The BatchBALD MNIST CNN (conv 32 k5, conv 64 k5, fc 128, fc C), sized from the input.

    Channel dropout sits after each conv block's pool + ReLU instead of between conv and pool:
    a per-channel mask of 0 or 1/(1-p) commutes with max-pooling and ReLU, so the function is
    the same and the masked activations can be reused. `stochastic_convs` says how many conv
    blocks are followed by channel dropout, counted from the last: 1 (`cnn`) keeps both convs in
    the deterministic prefix, which is what makes scoring fast; 2 (`batchbald-cnn`) is the exact
    reference network, whose second conv then runs K times.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        dropout: float = 0.5,
        stochastic_convs: int = 1,
        name: str = "cnn",
    ):
        super().__init__()
        channels, height, width = _check_image_shape(name, tuple(input_shape))
        if stochastic_convs not in (0, 1, 2):
            raise ModelSpecError(f"cnn stochastic_convs must be 0, 1 or 2, got {stochastic_convs}")
        self.spec = {
            "name": name,
            "input_shape": tuple(input_shape),
            "num_classes": num_classes,
            "dropout": dropout,
        }
        if name == "cnn" and stochastic_convs != 1:
            self.spec["stochastic_convs"] = stochastic_convs
        padding = cnn_padding(height, width)
        out_h = _conv_stage_size(_conv_stage_size(height, padding), padding)
        out_w = _conv_stage_size(_conv_stage_size(width, padding), padding)
        blocks: list[list[nn.Module]] = [
            [nn.Conv2d(channels, 32, kernel_size=5, padding=padding), nn.MaxPool2d(2), nn.ReLU()],
            [nn.Conv2d(32, 64, kernel_size=5, padding=padding), nn.MaxPool2d(2), nn.ReLU()],
        ]
        for block in blocks[len(blocks) - stochastic_convs :]:
            block.append(ConsistentDropout2d(dropout))
        layers = [layer for block in blocks for layer in block]
        fc = [
            nn.Flatten(),
            nn.Linear(64 * out_h * out_w, 128),
            ConsistentDropout(dropout),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        ]
        # The prefix ends just before the first dropout layer.
        first_dropout = next(
            (i for i, m in enumerate(layers) if isinstance(m, ConsistentDropout2d)), len(layers)
        )
        self.prefix = nn.Sequential(*layers[:first_dropout])
        self.head = nn.Sequential(*layers[first_dropout:], *fc)


class ResNet18(BayesianModule):
    """torchvision's ResNet-18 with a small-image stem (3x3 stride-1 conv, no max-pool) as the
    deterministic prefix and a dropout + linear head; BatchNorm is in eval mode when scoring."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, dropout: float = 0.5):
        super().__init__()
        # Imported here: torchvision takes seconds to import and only this model needs it.
        from torchvision.models import resnet18

        channels, _, _ = _check_image_shape("resnet18", tuple(input_shape))
        self.spec = {
            "name": "resnet18",
            "input_shape": tuple(input_shape),
            "num_classes": num_classes,
            "dropout": dropout,
        }
        backbone = resnet18(weights=None)
        backbone.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        backbone.maxpool = nn.Identity()
        backbone.fc = nn.Identity()
        self.prefix = backbone
        self.head = nn.Sequential(ConsistentDropout(dropout), nn.Linear(512, num_classes))


MODELS: dict[str, Callable[..., BayesianModule]] = {
    "mlp": MLP,
    "cnn": CNN,
    "batchbald-cnn": lambda input_shape, num_classes, dropout=0.5: CNN(
        input_shape, num_classes, dropout, stochastic_convs=2, name="batchbald-cnn"
    ),
    "resnet18": ResNet18,
}

# Building seeds torch's global generator inside fork_rng (torch.nn.init draws from it); the lock
# stops two threads (e.g. Prefect's thread pool) from interleaving their seeded draws.
_BUILD_LOCK = threading.Lock()


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Layers built inside draw their initial weights from `seed` alone; torch's global RNG
    state is left as it was. Every network baldflow builds (the zoo, plug-ins, torchvision's)
    is built inside one."""
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        yield


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    dropout: float = 0.5,
    seed: int = 0,
    **options,
) -> BayesianModule:
    """Build model `name` with weights determined by `seed` alone; torch's global RNG state is
    left as it was. `build_model(**model.spec)` rebuilds the architecture of `model`."""
    if name not in MODELS:
        raise ModelSpecError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or any(s < 1 for s in input_shape):
        raise ModelSpecError(f"input_shape must be non-empty positive sizes, got {input_shape}")
    if num_classes < 2:
        raise ModelSpecError(f"num_classes must be >= 2, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ModelSpecError(f"dropout must be in [0, 1), got {dropout}")
    with seeded_init(seed):
        try:
            return MODELS[name](input_shape, int(num_classes), float(dropout), **options)
        except TypeError as error:
            if "argument" not in str(error):
                raise
            raise ModelSpecError(f"invalid options for model {name!r}: {error}") from error
