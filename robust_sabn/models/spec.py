"""Architecture specs: plain JSON-able dicts that rebuild a model without unpickling anything.

``{"arch": "resnet_small", "kwargs": {...}}`` names a zoo model and its ``create_model`` arguments;
``{"callable": "package.module:function", "kwargs": {...}}`` names any importable builder (a user's own model).
Zoo models carry their spec as ``model.model_spec``; checkpoints and exports store it beside the weights.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping

from torch import nn

from ..errors import ConfigError


def build_model(spec: Mapping) -> nn.Module:
    """Build the model an architecture spec describes."""
    kwargs = dict(spec.get("kwargs") or {})
    if "arch" in spec:
        from .registry import create_model

        return create_model(spec["arch"], **kwargs)
    if "callable" in spec:
        return import_callable(spec["callable"])(**kwargs)
    raise ConfigError(
        f"an architecture spec needs 'arch' (a zoo name) or 'callable' ('module:function'), got {dict(spec)}")


def import_callable(target: str):
    """``"package.module:function"`` -> the function."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"expected 'module:callable', got {target!r}")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot import {target!r} ({err}); check the module is on PYTHONPATH") from err
    if not callable(obj):
        raise ConfigError(f"{target!r} is not callable")
    return obj
