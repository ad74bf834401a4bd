"""A campaign's network from its model parameters: a built-in or a plug-in (registered name,
entry point, `torchvision:ARCH` or import string), with pretrained weights from a file, made a
Bayesian model (consistent MC dropout, split into the part run once and the part run K times).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from baldflow.models.base import BayesianModule
from baldflow.models.patching import (
    bayesian_from_module,
    check_model_outputs,
    replace_last_linear,
    torchvision_model,
)
from baldflow.models.weights import load_pretrained, load_weights, read_pretrained
from baldflow.models.zoo import MODELS, ModelSpecError, seeded_init
from baldflow.models.zoo import build_model as build_zoo_model
from baldflow.plugins import MODEL_PLUGINS, Plugin, PluginError, error_line

WHOLE, HEAD = "whole", "head"


class HeadOnly(BayesianModule):
    """The head of a Bayesian model, on its prefix's outputs (a frozen backbone's cached
    features): what a frozen-backbone campaign trains and scores. `spec` rebuilds it (the
    whole network's spec with part "head")."""

    fold_dropout_linear = True

    def __init__(self, model: BayesianModule, spec: Mapping[str, Any]):
        super().__init__()
        self.prefix = nn.Identity()
        self.head = model.head
        self.spec = dict(spec)


def plugin_label(plugin: Plugin) -> str:
    """How messages name a model: `model plug-in 'NAME' (package P)`, or the built-in's name."""
    if plugin.builtin:
        return f"model {plugin.name!r}"
    package = f" (package {plugin.package})" if plugin.package else ""
    return f"model plug-in {plugin.name!r}{package}"


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    dropout: float = 0.5,
    seed: int = 0,
    *,
    options: Mapping[str, Any] | None = None,
    weights: str | None = None,
    head: str | None = None,
    head_dropout: float | None = None,
    part: str = WHOLE,
    **zoo_options: Any,
) -> BayesianModule:
    """The network `name` names, its random initialisation fixed by `seed` alone.

    `build_model(**model.spec)` rebuilds the architecture of a model built here (weights come
    from its state_dict). A built-in network with nothing but its own options is built as the
    zoo always built it. Otherwise the plug-in's callable makes an nn.Module, pretrained
    `weights` are loaded into it (a `torchvision:ARCH` network then gets a fresh last layer of
    `num_classes` outputs), `head_dropout` inserts a dropout before its last linear layer,
    its dropout layers become consistent MC dropout and it is split into prefix and head
    (`model.head` names the head when tracing cannot). Its outputs are checked: finite logits,
    one per class. `part="head"` gives the head alone (a frozen backbone's campaign).
    """
    if part not in (WHOLE, HEAD):
        raise ModelSpecError(f"part must be {WHOLE!r} or {HEAD!r}, got {part!r}")
    options = {**dict(options or {}), **zoo_options}
    input_shape = tuple(int(s) for s in input_shape)
    if name in MODELS and weights is None and part == WHOLE:
        if head is not None or head_dropout is not None:
            raise ModelSpecError(
                f"model.head and model.head_dropout apply to plug-in models; the built-in "
                f"{name!r} has its own dropout (model.dropout)"
            )
        return build_zoo_model(name, input_shape, num_classes, dropout, seed, **options)
    spec = {
        "name": name, "input_shape": list(input_shape), "num_classes": int(num_classes),
        "dropout": float(dropout), "options": dict(options), "head": head,
        "head_dropout": head_dropout,
    }  # fmt: skip
    model = _build_bayesian(name, input_shape, num_classes, dropout, seed, options, weights, spec)
    if part == HEAD:
        return HeadOnly(model, {**spec, "part": HEAD})
    return model


def _build_bayesian(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    dropout: float,
    seed: int,
    options: dict[str, Any],
    weights: str | None,
    spec: dict[str, Any],
) -> BayesianModule:
    plugin = MODEL_PLUGINS.resolve(name)
    label = plugin_label(plugin)
    module: nn.Module
    if plugin.builtin:
        module = build_zoo_model(name, input_shape, num_classes, dropout, seed, **options)
    elif plugin.origin == "scheme":
        module = plugin.obj(input_shape, num_classes, options, seed=seed)
    else:
        module = _call_factory(plugin, input_shape, num_classes, options, seed, label)
    if weights is not None:
        state, _ = read_pretrained(weights)
        load_pretrained(module, state, path=weights)
    if plugin.origin == "scheme":
        # A torchvision network is built with its own number of classes, so that a pretrained
        # file made for it loads; its last layer then gets one output per class of ours.
        replace_last_linear(module, num_classes, generator=torch.Generator().manual_seed(seed))
    if isinstance(module, BayesianModule):
        if spec["head"] is not None or spec["head_dropout"] is not None:
            raise ModelSpecError(
                f"{label}: model.head and model.head_dropout apply to plug-in models; this one "
                "is already a BayesianModule"
            )
        if not plugin.builtin:
            module.spec = spec
        bayesian = module
    else:
        bayesian = bayesian_from_module(
            module,
            head=spec["head"],
            head_dropout=spec["head_dropout"],
            # Random rows, not zeros: a wrong split can agree with the module on zeros.
            sample_input=torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)),
            spec=spec,
        )
    check_model_outputs(bayesian, input_shape, num_classes, label=label)
    return bayesian


def _call_factory(
    plugin: Any,
    input_shape: tuple[int, ...],
    num_classes: int,
    options: dict[str, Any],
    seed: int,
    label: str,
) -> nn.Module:
    """The plug-in's nn.Module, its initialisation drawn from `seed` alone (`seeded_init`)."""
    with seeded_init(seed):
        try:
            module = plugin.obj(input_shape, int(num_classes), dict(options))
        except Exception as error:  # noqa: BLE001 (the plug-in's own code)
            raise ModelSpecError(f"{label}: building it failed: {error_line(error)}") from error
    if not isinstance(module, nn.Module):
        raise ModelSpecError(f"{label}: returned a {type(module).__name__}, not a torch.nn.Module")
    return module


class ModelRebuildError(ValueError):
    """A spec and weights that do not make a network (bad JSON, unknown model, other shapes)."""


def rebuild_model(spec_path: str | Path, weights_path: str | Path) -> torch.nn.Module:
    """The network `spec_path` (build_model's arguments as JSON: a built-in's or a plug-in's)
    describes, with the weights at `weights_path`, in eval mode on the CPU. A missing spec file
    raises FileNotFoundError; anything else that keeps them from making a network raises
    ModelRebuildError."""
    try:
        spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
        model = build_model(**spec)
        # WeightsError (missing or unsafe weights) is a ValueError; load_state_dict raises
        # RuntimeError for weights of another architecture.
        model.load_state_dict(load_weights(weights_path))
    except (ValueError, TypeError, RuntimeError, ModelSpecError) as error:
        raise ModelRebuildError(f"{type(error).__name__}: {error}") from error
    return model.eval()


def _torchvision_factory(arch: str):
    """The model plug-in `torchvision:ARCH`: torchvision's architecture with its own number of
    classes (1000), randomly initialised from the round's seed; nothing is ever downloaded."""
    import torchvision.models as tv_models

    if arch not in tv_models.list_models(module=tv_models):
        torchvision_model(arch, 1000)  # raises ModelSpecError naming close architectures

    def make(
        input_shape: Sequence[int], num_classes: int, options: Mapping[str, Any], seed: int = 0
    ) -> nn.Module:
        return torchvision_model(arch, 1000, seed=seed, **dict(options))

    return make


def _zoo_factory(name: str):
    """A built-in network as a model plug-in: (input_shape, num_classes, options) -> module,
    options holding `dropout` and the network's own keywords."""

    def make(input_shape: Sequence[int], num_classes: int, options: Mapping[str, Any]):
        return MODELS[name](tuple(input_shape), int(num_classes), **dict(options))

    return make


def _as_model_factory(obj: Any, spec: str) -> Any:
    if not callable(obj):
        raise PluginError("model", spec, f"is a {type(obj).__name__}, not a callable")
    return obj


def _register_builtins() -> None:
    for name in MODELS:
        MODEL_PLUGINS.register(name, _zoo_factory(name), builtin=True)
    MODEL_PLUGINS.schemes["torchvision"] = _torchvision_factory
    MODEL_PLUGINS.set_adapter(
        _as_model_factory,
        "callable(input_shape, num_classes, options) -> torch.nn.Module (x -> logits [B, C])",
    )


_register_builtins()
