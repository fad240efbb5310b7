"""Model zoo: CIFAR-style ResNets whose normalization and convolution layers are chosen by name."""
from . import preact_resnet, resnet, wide_resnet  # noqa: F401  (register the builders)
from .layers import Normalize
from .registry import MODELS, create_model, list_models, register_model
from .spec import build_model, import_callable

__all__ = ["MODELS", "Normalize", "build_model", "create_model", "import_callable", "list_models",
           "register_model"]
