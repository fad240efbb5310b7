"""Datasets: readers of the standard on-disk formats, the registry of datasets by name, their splits, seeded batch
augmentation, and evaluation images."""
from .augment import Augment, CropFlip, random_crop_flip
from .datasets import (
    DATASETS,
    DatasetFacts,
    DataSplits,
    as_tensors,
    default_val_size,
    fixed_subset,
    gather,
    load_dataset,
    split_indices,
    test_images,
)
from .extra import read_image_npz, write_image_npz
from .images import ImageFiles, ImageTensors

__all__ = ["DATASETS", "Augment", "CropFlip", "DataSplits", "DatasetFacts", "ImageFiles", "ImageTensors",
           "as_tensors", "default_val_size", "fixed_subset", "gather", "load_dataset", "random_crop_flip",
           "read_image_npz", "split_indices", "test_images", "write_image_npz"]
