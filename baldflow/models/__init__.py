"""Bayesian (MC dropout) models: consistent dropout layers, the prefix/head module, a zoo, and
any user network made Bayesian (building.py: the model plug-ins)."""

from baldflow.models.base import BayesianModule
from baldflow.models.building import HeadOnly, ModelRebuildError, build_model, rebuild_model
from baldflow.models.dropout import ConsistentDropout, ConsistentDropout2d, DropoutStateError
from baldflow.models.patching import (
    PatchedModel,
    bayesian_from_module,
    check_model_outputs,
    replace_last_linear,
    torchvision_model,
)
from baldflow.models.weights import WeightsError, load_pretrained, load_weights, read_pretrained
from baldflow.models.zoo import CNN, MLP, MODELS, ModelSpecError, ResNet18

__all__ = [
    "CNN",
    "MLP",
    "MODELS",
    "BayesianModule",
    "ConsistentDropout",
    "ConsistentDropout2d",
    "DropoutStateError",
    "HeadOnly",
    "ModelRebuildError",
    "ModelSpecError",
    "PatchedModel",
    "ResNet18",
    "WeightsError",
    "bayesian_from_module",
    "build_model",
    "check_model_outputs",
    "load_pretrained",
    "load_weights",
    "read_pretrained",
    "rebuild_model",
    "replace_last_linear",
    "torchvision_model",
]
