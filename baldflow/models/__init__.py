"""Bayesian (MC dropout) models: consistent dropout layers, the prefix/head module and a zoo."""

from baldflow.models.base import BayesianModule
from baldflow.models.dropout import ConsistentDropout, ConsistentDropout2d, DropoutStateError
from baldflow.models.weights import WeightsError, load_weights
from baldflow.models.zoo import CNN, MLP, MODELS, ModelSpecError, ResNet18, build_model

__all__ = [
    "CNN",
    "MLP",
    "MODELS",
    "BayesianModule",
    "ConsistentDropout",
    "ConsistentDropout2d",
    "DropoutStateError",
    "ModelSpecError",
    "ResNet18",
    "WeightsError",
    "build_model",
    "load_weights",
]
