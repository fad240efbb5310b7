"""The evaluation images: the first ``n`` test images of a dataset (as RobustBench takes them)."""
from __future__ import annotations

import torch

from ..errors import ConfigError


def test_images(dataset: str, data_dir: str | None = None, n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of ``dataset``'s test split as ``(x in [0, 1] N x C x H x W, y int64)``."""
    from ..training.data import load_dataset

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of examples must be a positive integer, got {n!r}")
    test = load_dataset(dataset, data_dir).test
    n = min(n, len(test))
    if hasattr(test, "batch"):
        return test.batch(torch.arange(n))
    items = [test[i] for i in range(n)]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long)
