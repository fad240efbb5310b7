"""``curves.png``: accuracy, loss, learning rate and per-layer metrics against the epoch; validation accuracies
with error bars of their 95% Wilson interval (on ``val_images`` images)."""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_write
from ..stats import accuracy_interval, error_bars

ACCURACY_KEYS = {
    "train_clean_acc": "train clean (batch)",
    "train_adv_acc": "train adversarial (batch)",
    "val_clean_acc": "val clean (adv route)",
    "val_clean_acc_clean_route": "val clean (clean route)",
    "val_robust_acc": "val robust (adv route)",
}


def _error_bars(records: Sequence[dict[str, Any]], key: str) -> list[list[float]] | None:
    """The 95% interval of a validation accuracy as error bars (None for other values, or records without the
    number of validation images)."""
    if not key.startswith("val_") or not all(r.get(key) is not None and r.get("val_images") for r in records):
        return None
    return error_bars([r[key] for r in records], [accuracy_interval(r[key], r["val_images"]) for r in records],
                      scale=1.0)


def plot_curves(records: Sequence[dict[str, Any]], path: str | Path, steps_per_epoch: int) -> Path:
    """Draw the epoch records of ``metrics.jsonl`` (and the ``stop`` record of a run cut inside an epoch) into a
    PNG against the epoch, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r for r in records if r.get("kind") in ("epoch", "stop")]
    layer_keys = sorted({k for r in epochs for k in r if k.startswith("layer/")})
    panels = 4 if layer_keys else 3
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.6))
    x = [r["step"] / steps_per_epoch for r in epochs]

    def draw(ax, keys: dict[str, str], title: str) -> None:
        for key, label in keys.items():
            values = [r.get(key) for r in epochs]
            if any(v is not None for v in values):
                ys = [float("nan") if v is None else v for v in values]
                ax.errorbar(x, ys, yerr=_error_bars(epochs, key), marker=".", capsize=2, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines and len(keys) > 1:
            ax.legend(fontsize=7)

    draw(axes[0], ACCURACY_KEYS, "accuracy")
    draw(axes[1], {"train_loss": "train loss"}, "loss")
    draw(axes[2], {"lr": "learning rate"}, "learning rate")
    if layer_keys:
        draw(axes[3], {k: k.removeprefix("layer/") for k in layer_keys}, "layer metrics (mean over layers)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))
