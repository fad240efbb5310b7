"""Model zoo: CIFAR-style ResNets whose normalization and convolution layers are chosen by name."""
from . import preact_resnet, resnet, wide_resnet  # noqa: F401  (register the builders)
from .layers import CONV_LAYERS, Normalize
from .registry import create_model, list_models, register_model

__all__ = ["CONV_LAYERS", "Normalize", "create_model", "list_models", "register_model"]
