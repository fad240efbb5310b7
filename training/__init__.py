"""Installed as ``robust_sabn.training`` (pyproject.toml's package-dir maps this folder there): adversarial training.

The config, the loop, recipes, checkpoints and resume (``robust-sabn train``).
"""
from .config import TrainConfig, recipe_names
from .loop import TrainingDiverged, TrainResult, train
from .run_dir import resume_config

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "recipe_names",
           "resume_config", "train"]
