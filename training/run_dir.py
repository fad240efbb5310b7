"""Run folders: where a run writes, how it is resumed.

A run folder holds ``config.yaml`` (the resolved config), ``metrics.jsonl``, ``curves.png``, ``last.pt`` (every
epoch, and every ``--save-every`` steps) and ``best.pt`` (best robust validation accuracy). A checkpoint is a dict
of tensors and plain values (loadable with ``weights_only=True``): ``model``, ``model_spec``, ``config``,
``epoch`` (completed epochs), ``batch`` (batches done in the current epoch), ``step`` (optimizer steps),
``optimizer``, ``scheduler``, ``scaler``, ``rng`` (one entry per process), ``meters``, ``best``, ``elapsed``.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from ..io import load_checkpoint
from .config import TrainConfig

LAST, BEST, CONFIG, METRICS, CURVES = "last.pt", "best.pt", "config.yaml", "metrics.jsonl", "curves.png"

# Settings a resumed run may change: they decide how far and where it runs, not what it computes.
RESUME_OVERRIDES = ("max_steps", "device", "save_every", "log_every", "num_workers", "progress", "data_dir")


def default_run_dir(config: TrainConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{config.dataset}-{config.arch}-{config.norm}-{config.objective}-{stamp}")


def prepare_new_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` for a new run; refuse one that holds a run, or one that cannot be written."""
    if (run_dir / LAST).exists():
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                          "or choose another --out-dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write to the output folder {run_dir} ({err.strerror or err}); "
                          "choose a writable --out-dir") from None


def load_last(run_dir: str | Path) -> dict[str, Any]:
    """The ``last.pt`` of a run folder; a clear error when there is nothing to resume."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"cannot resume: {run_dir} is not a folder (pass the run folder given as --out-dir)")
    if not (run_dir / LAST).is_file():
        raise CheckpointError(f"cannot resume: {run_dir} holds no {LAST} (the run stopped before its first "
                              "checkpoint); start it again without --resume")
    return load_checkpoint(run_dir / LAST)


def resume_config(run_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The config of the run in ``run_dir`` with ``overrides``: the settings of :data:`RESUME_OVERRIDES` may
    change; any other must keep the run's value (so the original command plus ``--resume`` works)."""
    saved = load_last(run_dir)["config"]
    config = TrainConfig.from_dict({**saved, **overrides, "out_dir": str(run_dir)}, source=f"{Path(run_dir) / LAST}")
    changed = sorted(k for k, v in config.to_dict().items()
                     if k not in (*RESUME_OVERRIDES, "out_dir") and v != saved.get(k))
    if changed:
        raise ConfigError(f"--resume continues a run with its own config; {', '.join(changed)} cannot change "
                          f"(only {', '.join(RESUME_OVERRIDES)} can); start a new run to change them")
    return config
