"""The adversarial-training loop: SGD on an objective, validation every epoch, checkpoints, metrics, resume."""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..allocator import keep_freed_memory
from ..checkpoint import TrainingCheckpoint
from ..compiling import compilations, compile_in_place
from ..data import as_tensors, fixed_subset, load_dataset, read_image_npz
from ..distributed import NO_FORWARD_BUFFER_SYNC, Processes, start_processes
from ..errors import ConfigError, UserError
from ..eval.evaluate import freeze
from ..eval.settings import EvalSettings
from ..eval.shards import shared_points
from ..io import atomic_write_text, load_weights
from ..memory_format import choose_memory_format
from ..models import create_model
from ..nn import layer_metrics, routes_of
from ..provenance import provenance
from ..rng import preserved_rng, rng_state, seed_everything, set_rng_state
from .awp import WeightPerturbation
from .batches import BatchPlan
from .config import TrainConfig
from .curves import plot_curves
from .ema import WeightAverage, ema_decay
from .metrics import Meter, MetricsLog, log_interval
from .objectives import OBJECTIVES
from .optim import build_optimizer, build_scheduler
from .run_dir import (
    BEST,
    CONFIG,
    CURVES,
    LAST,
    METRICS,
    RunDirLock,
    claim_run_dir,
    default_run_dir,
    load_last,
    resume_file,
)
from .trackers import TrackedRun, Trackers

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingDiverged(UserError):
    """The loss stopped being a finite number."""


@dataclass
class TrainResult:
    run_dir: Path
    epoch: int  # completed epochs
    step: int  # optimizer steps
    best: dict[str, Any] = field(default_factory=dict)  # {"val_robust_acc", "epoch", "step"} of best.pt
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl
    steps_run: int = 0  # optimizer steps this call took (0: a resumed run that had already finished)


def train(config: TrainConfig, resume: bool = False) -> TrainResult:
    """Train as ``config`` says, in ``config.out_dir``; with ``resume`` continue the run saved there (use
    :func:`robust_sabn.training.resume_config` to read its config). Under ``torchrun`` every process calls this."""
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    try:
        with start_processes(config.device) as processes:
            return Trainer(config, processes, resume).run()
    finally:
        torch.use_deterministic_algorithms(flags[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[1:]


def set_determinism(deterministic: bool) -> None:
    """``--deterministic``: deterministic algorithms only, cuDNN's included (what makes a resumed run on a GPU
    continue bit for bit); otherwise let cuDNN pick the fastest algorithms for each shape (``cudnn.benchmark``)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


class Trainer:
    """One training run; :meth:`run` trains until ``epochs`` are done or ``max_steps`` optimizer steps are taken."""

    def __init__(self, config: TrainConfig, processes: Processes, resume: bool) -> None:
        self.processes, self.device = processes, processes.device
        out_dir = processes.broadcast(config.out_dir or default_run_dir(config))
        self.config = config = dataclasses.replace(config, out_dir=out_dir)
        self.run_dir = Path(out_dir)
        checkpoint = load_last(self.run_dir) if resume else None
        self._check_device()
        Trackers.check(config.log)  # a missing package stops the run before it starts
        set_determinism(config.deterministic)
        if self.device.type == "cpu":
            keep_freed_memory()  # as evaluation does: no page faults for the same-sized tensors of every step

        self.splits = load_dataset(config.dataset, config.data_dir, download=config.download,
                                   val_size=config.val_size, seed=config.seed)
        self.train_set = fixed_subset(self.splits.train, config.train_size, config.seed)
        self.extra_set = None if config.extra_data is None else read_image_npz(
            config.extra_data, num_classes=self.splits.num_classes, in_channels=self.splits.in_channels,
            image_size=self.splits.image_size)
        self.val_images = as_tensors(self.splits.val)
        self.input_shape = [self.splits.in_channels, self.splits.image_size, self.splits.image_size]
        self.batches = BatchPlan(self.train_set, config.batch_size, config.seed, shuffle=True, drop_last=True,
                                 augment=self.splits.augment, extra=self.extra_set,
                                 extra_fraction=config.extra_fraction)
        self.steps_per_epoch = self.batches.per_process(processes.world_size)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"the training split ({len(self.train_set)} images) is smaller than one batch of "
                              f"{config.batch_size} per process; lower --batch-size")
        seed_everything(config.seed)
        self.model = self._build_model()
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config, self.steps_per_epoch)
        self.amp_dtype = AMP_DTYPES[config.amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.objective = OBJECTIVES[config.objective].from_config(config)
        self.ema = WeightAverage(self.model, config.ema_decay, config.warmup_steps) if config.ema_decay else None
        self.awp = WeightPerturbation(config.awp_gamma) if config.awp_gamma else None
        self.epoch = self.batch = self.step = 0
        self.elapsed = self.epoch_seconds = self.compile_seconds = 0.0
        self.compile_steps = 0
        self.best: dict[str, Any] = {}
        self.epoch_meter, self.window_meter = Meter(), Meter()
        if checkpoint is not None:
            self._restore(checkpoint)
        else:
            seed_everything(config.seed + processes.rank)  # each process draws its own attack starts
        self.first_step = self.layers_read_at = self.step
        self.log_every = config.log_every or log_interval(self.steps_per_epoch, config.max_steps)
        self.sample: tuple[torch.Tensor, torch.Tensor] | None = None  # the last step's clean and adversarial images
        self.log: MetricsLog | None = None
        self.lock: RunDirLock | None = None
        self.trackers = Trackers([], TrackedRun(self.run_dir))
        if processes.is_main:  # the first process owns the run folder
            self.lock = claim_run_dir(self.run_dir, resume=checkpoint is not None)
            try:
                self.log = MetricsLog(self.run_dir / METRICS, keep_until_step=self.step)
                atomic_write_text(self.run_dir / CONFIG, _versions_header() + config.to_yaml())
                self.trackers = Trackers(config.log, TrackedRun(self.run_dir, self.step, config.to_dict()))
            except BaseException:
                self.lock.release()
                raise
        if config.compile:  # every call of the model from here on: the training forward, the attacks, AWP
            compile_in_place(self.model, self.device, self._compile_fallback)
        # Last, so that a constructor that fails holds no wrapper (see release). DDP wraps the model for the
        # training forward; attacks and validation use self.model itself.
        self.net: nn.Module = self.model
        if processes.distributed:
            # No buffer sync at each forward: each process keeps the BN statistics of its own shard, and the trainer
            # averages them before every validation and checkpoint (syncing would overwrite them with the first
            # process's at every forward). Unused parameters exist only where the objective trains one route of a
            # routed model (madry, fast: the clean route's own parameters), and searching for them costs a graph
            # traversal per step.
            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.objective.single_route and bool(routes_of(self.model)),
                **NO_FORWARD_BUFFER_SYNC)

    def _compile_fallback(self, reason: str) -> None:
        if self.processes.is_main:
            tqdm.write(f"--compile: {reason}; the model trains eager")

    def _check_device(self) -> None:
        config, device = self.config, self.device
        if config.amp != "off" and device.type != "cuda":
            raise ConfigError("--amp needs a CUDA device (on CPU, float32 is the fast path); drop --amp on CPU")
        if config.sync_bn and self.processes.distributed and device.type != "cuda":
            raise ConfigError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm does not run on CPU); "
                              "drop --sync-bn for CPU processes")

    def _build_model(self) -> nn.Module:
        config, splits = self.config, self.splits
        kwargs = {"width": config.width} if config.width is not None else {}
        model = create_model(config.arch, num_classes=splits.num_classes, norm=config.norm,
                             in_channels=splits.in_channels, mean=splits.mean, std=splits.std,
                             conv=config.conv, routes=(config.clean_route, config.adv_route), **kwargs)
        if config.sync_bn:
            spec = model.model_spec
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model.model_spec = spec
        model.to(self.device)
        choice = choose_memory_format(model, self.device, config.channels_last, amp=config.amp != "off")
        if choice.note and self.processes.is_main:
            tqdm.write(f"training in NCHW, not channels_last: {choice.note}")
        self.memory_format = choice.memory_format  # of the model and of every training batch
        return model.to(memory_format=self.memory_format)

    def _restore(self, checkpoint: TrainingCheckpoint) -> None:
        source = resume_file(self.run_dir)
        if source.name == BEST and self.processes.is_main:
            tqdm.write(f"resuming from {source}: the run stopped while it wrote its first {LAST}, which would hold "
                       "the same state")
        load_weights(self.model, checkpoint.model, source=str(source))
        if self.ema is not None:
            if checkpoint.ema is None:
                raise ConfigError(f"{source} holds no weight average; resume without --ema-decay")
            load_weights(self.ema.model, checkpoint.ema, source=f"{source} (ema)")
        self.optimizer.load_state_dict(checkpoint.optimizer)
        self.scheduler.load_state_dict(checkpoint.scheduler)
        self.scaler.load_state_dict(checkpoint.scaler)
        self.epoch, self.batch, self.step = checkpoint.epoch, checkpoint.batch, checkpoint.step
        self.elapsed, self.epoch_seconds = checkpoint.elapsed, checkpoint.epoch_seconds
        self.best = dict(checkpoint.best)
        self.epoch_meter = Meter(checkpoint.meters["epoch"])
        self.window_meter = Meter(checkpoint.meters["window"])
        states = checkpoint.rng
        if len(states) == self.processes.world_size:
            set_rng_state(states[self.processes.rank], self.device)
        else:  # another number of processes: the run continues, but not bit-for-bit
            seed_everything(self.config.seed + self.step + self.processes.rank)

    # -- the loop ---------------------------------------------------------------------------------------------
    def budget_spent(self) -> bool:
        return self.config.max_steps is not None and self.step >= self.config.max_steps

    def done(self) -> bool:
        return self.epoch >= self.config.epochs or self.budget_spent()

    def run(self) -> TrainResult:
        try:
            while not self.done():
                self.run_epoch()
            return self.finish_run()
        finally:
            self.release()

    def release(self) -> None:
        """Let go of the run folder's lock and of the DDP wrapper, and with it of the process group, however the run
        ended: a gloo group that is only released during interpreter shutdown can abort the process at exit."""
        self.net = self.model
        self.trackers.close()
        if self.lock is not None:
            self.lock.release()

    def run_epoch(self) -> None:
        """Train to the end of the current epoch (or the step budget); validate and save at the epoch's end."""
        self.train_epoch()
        if self.batch == self.steps_per_epoch:
            self.end_epoch()

    def finish_run(self) -> TrainResult:
        if self.batch > 0 and self.step > self.first_step:  # cut inside an epoch: validate, save where it stopped
            self.finish("stop")
        records = self.log.records if self.log is not None else []
        return TrainResult(self.run_dir, self.epoch, self.step, dict(self.best), list(records),
                           self.step - self.first_step)

    def train_epoch(self) -> None:
        config = self.config
        batches = self.batches.epoch(self.epoch, start_batch=self.batch, rank=self.processes.rank,
                                     world_size=self.processes.world_size, num_workers=config.num_workers,
                                     pin_memory=self.device.type == "cuda")
        bar = tqdm(total=self.steps_per_epoch, initial=self.batch, desc=f"epoch {self.epoch + 1}/{config.epochs}",
                   disable=not (config.progress and self.processes.is_main), leave=False, dynamic_ncols=True)
        with bar:
            for x, y in batches:
                if self.budget_spent():
                    break
                start, compiled = time.perf_counter(), compilations() if config.compile else 0
                values = self.train_step(x, y)
                self.batch += 1
                self.step += 1
                seconds = time.perf_counter() - start
                self.elapsed += seconds
                if config.compile and compilations() > compiled:  # a step that compiled: warm-up, logged apart
                    self.compile_seconds += seconds
                    self.compile_steps += 1
                else:
                    self.epoch_seconds += seconds
                bar.update(1)
                bar.set_postfix({k.removeprefix("train_"): f"{v:.3f}" for k, v in values.items()
                                 if not k.startswith("layer/")}, refresh=False)
                if self.step % self.log_every == 0:
                    self.log_record("step", self.window_meter)
                    self.window_meter = Meter()
                if config.save_every and self.step % config.save_every == 0 and self.batch < self.steps_per_epoch:
                    self.processes.average_buffers(self.model)  # what last.pt holds is what every process continues
                    self.save(LAST)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One optimizer step; returns the batch's loss and accuracies (summed over processes)."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        x = x.contiguous(memory_format=self.memory_format)
        self.model.train()
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        with autocast:
            x_adv = self.objective.adversarial(self.net, x, y)
        self.sample = (x, x_adv)
        perturbation = self.perturb_weights(x, x_adv, y, autocast)
        with autocast:
            out = self.objective.loss(self.net, x, x_adv, y)
        counts = torch.stack([out.loss.detach().float() * len(y), torch.tensor(float(len(y)), device=self.device),
                              *_outcomes(out.clean_logits, y), *_outcomes(out.adv_logits, y),
                              *_broken(out.clean_logits, out.adv_logits, y)])
        if self.processes.distributed:
            dist.all_reduce(counts)
        loss_sum, n, clean, clean_ce, n_clean, adv, adv_ce, n_adv, broken, n_both = counts.tolist()
        if not torch.isfinite(counts[0]):
            saved = f" ({self.run_dir / LAST} holds the last good state)" if (self.run_dir / LAST).exists() else ""
            raise TrainingDiverged(f"the loss became {loss_sum / n} at step {self.step + 1} (epoch {self.epoch + 1}); "
                                   f"lower --lr or check the data{saved}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if perturbation is not None:
            self.awp.apply(self.model, perturbation, sign=-1.0)
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        values = {"train_loss": loss_sum / n}
        for meter in (self.epoch_meter, self.window_meter):
            meter.add("train_loss", loss_sum, n)
            if n_clean:
                meter.add("train_clean_acc", clean, n_clean)
                meter.add("train_clean_ce", clean_ce, n_clean)
            if n_adv:
                meter.add("train_adv_acc", adv, n_adv)
                meter.add("train_adv_ce", adv_ce, n_adv)
            if n_both:
                meter.add("train_attack_success", broken, n_both)
            if self.awp is not None:
                meter.add("awp_applied", float(perturbation is not None))
        if n_clean:
            values["train_clean_acc"] = clean / n_clean
        if n_adv:
            values["train_adv_acc"] = adv / n_adv
        return values

    def perturb_weights(self, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                        autocast: torch.autocast) -> list[torch.Tensor] | None:
        """AWP, from epoch ``--awp-warmup`` on: move the shared weights uphill on the objective's loss at this step's
        ``x_adv``; returns the perturbation, which :meth:`train_step` removes after the optimizer step."""
        if self.awp is None or self.epoch < self.config.awp_warmup:
            return None

        def ascent_loss() -> torch.Tensor:
            with autocast:
                return self.scaler.scale(self.objective.loss(self.model, x, x_adv, y, log=False).loss)

        perturbation = self.awp.find(self.model, ascent_loss)
        if perturbation is not None:
            self.awp.apply(self.model, perturbation)
        return perturbation

    # -- validation, checkpoints, metrics ---------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Clean and robust accuracy on the validation split through the adv route under ``robust-sabn eval``'s
        ``pgd-<val_steps>`` (the same batches, seeds, attack and sharding over processes, on a folded copy in eval
        mode), and clean accuracy through the clean route when the model has routes; of the weight average when
        ``--ema-decay`` keeps one (:meth:`scored_model`). The result does not depend on the number of processes.
        Under AMP the batches are the training batch size (the attack runs in float32), else twice that."""
        config, device = self.config, self.device
        x, y = self.val_images
        settings = EvalSettings(config.threat, f"pgd-{config.val_steps}", config.seed,
                                config.batch_size * (1 if config.amp != "off" else 2), device, progress=False,
                                processes=self.processes)
        model = self.scored_model()
        routed = bool(routes_of(model))
        with preserved_rng():
            attacked = shared_points(freeze(model, config.adv_route if routed else None, device), x, y, settings)[0]
            clean = shared_points(freeze(model, config.clean_route, device), x, y,
                                  settings.with_attack(None))[0] if routed else []
        n = len(y)
        result = {"val_clean_acc": sum(int(r.correct.sum()) for r in attacked) / n,
                  "val_robust_acc": sum(int(r.robust.sum()) for r in attacked) / n, "val_images": n}
        if routed:
            result["val_clean_acc_clean_route"] = sum(int(r.correct.sum()) for r in clean) / n
        return result

    def scored_model(self) -> nn.Module:
        """The model validation scores and best.pt is chosen by: the weight average (with the live model's buffers)
        when there is one, else the live model."""
        return self.ema.copy_buffers(self.model) if self.ema is not None else self.model

    def end_epoch(self) -> None:
        self.epoch += 1
        self.batch = 0
        self.finish("epoch")
        self.epoch_meter, self.epoch_seconds, self.compile_seconds, self.compile_steps = Meter(), 0.0, 0.0, 0

    def finish(self, kind: str) -> None:
        """Validate, log a ``kind`` record, write best.pt (when robust accuracy improved), last.pt and the curves."""
        start = time.perf_counter()
        self.processes.average_buffers(self.model)
        val = self.validate()
        compiled = ({"compile_time": self.compile_seconds, "compile_steps": self.compile_steps}
                    if self.config.compile else {})
        record = self.log_record(kind, self.epoch_meter, epoch_time=self.epoch_seconds,
                                 val_time=time.perf_counter() - start, **compiled, **val)
        improved = val["val_robust_acc"] > self.best.get("val_robust_acc", -1.0)
        if improved:
            self.best = {"val_robust_acc": val["val_robust_acc"], "epoch": self.epoch, "step": self.step}
            self.save(BEST)
        self.save(LAST)
        if self.log is not None:
            plot_curves(self.log.records, self.run_dir / CURVES, self.steps_per_epoch)
            if self.sample is not None:
                self.trackers.adversarials(*self.sample, self.step)
        if self.processes.is_main and self.config.progress:
            routed = "val_clean_acc_clean_route" in record
            tqdm.write(_summary(record, self.config.epochs, improved, self.config.adv_route if routed else None))

    def read_layer_metrics(self) -> None:
        """Per-layer metrics (e.g. UBN's condensation) accumulate on the device inside the layers and are read here,
        into both running averages, once per metrics line, epoch and checkpoint: a host synchronization per layer
        per step would stall a GPU."""
        steps = self.step - self.layers_read_at
        if steps:
            for key, value in layer_metrics(self.model).items():
                for meter in (self.epoch_meter, self.window_meter):
                    meter.add(f"layer/{key}", value * steps, steps)
        self.layers_read_at = self.step

    def log_record(self, kind: str, meter: Meter, **extra: float) -> dict[str, Any]:
        self.read_layer_metrics()
        last_lr = self.scheduler.base_lrs[0] * self.scheduler.lr_lambdas[0](max(self.step - 1, 0))
        record = {"kind": kind, "epoch": self.epoch + (kind != "epoch"), "step": self.step, "lr": last_lr,
                  **meter.averages(), **extra, "time": self.elapsed}
        if self.ema is not None:
            record["ema_decay"] = ema_decay(max(self.step - 1, 0), self.ema.decay, self.ema.warmup_steps)
        if self.log is not None:
            self.log.append(record)
            self.trackers.record(record)
        return record

    def save(self, name: str) -> None:
        """Write a checkpoint (every process takes part: each contributes its RNG state; the main one writes)."""
        self.read_layer_metrics()  # into the saved averages: the layers' counters are not part of the checkpoint
        states = self.processes.gather(rng_state(self.device))
        if not self.processes.is_main:
            return
        TrainingCheckpoint(
            model=self.model.state_dict(), model_spec=self.model.model_spec, config=self.config.to_dict(),
            epoch=self.epoch, batch=self.batch, step=self.step, optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(), rng=states,
            meters={"epoch": self.epoch_meter.state(), "window": self.window_meter.state()}, best=dict(self.best),
            elapsed=self.elapsed, epoch_seconds=self.epoch_seconds, world_size=self.processes.world_size,
            input_shape=self.input_shape, ema=self.scored_model().state_dict() if self.ema is not None else None,
            versions=provenance(),
        ).save(self.run_dir / name)


def _versions_header() -> str:
    """``config.yaml``'s first lines: what the run was made with, as YAML comments (the file stays a config)."""
    return "".join(f"# {name}: {value}\n" for name, value in provenance().items() if value is not None)


def _outcomes(logits: torch.Tensor | None, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(number right, summed cross-entropy, number scored) of a batch's logits; zeros when the objective did not
    produce them."""
    if logits is None:
        return (torch.zeros((), device=y.device),) * 3
    logits = logits.detach().float()
    return ((logits.argmax(1) == y).sum().float(), F.cross_entropy(logits, y, reduction="sum"),
            torch.tensor(float(len(y)), device=y.device))


def _broken(clean_logits: torch.Tensor | None, adv_logits: torch.Tensor | None,
            y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training attack's success: (images right on clean input and wrong on their adversarial example, images
    right on clean input); zeros without both logits."""
    if clean_logits is None or adv_logits is None:
        zero = torch.zeros((), device=y.device)
        return zero, zero
    right = clean_logits.argmax(1) == y
    return (right & (adv_logits.argmax(1) != y)).sum().float(), right.sum().float()


def _summary(record: dict[str, Any], epochs: int, improved: bool, adv_route: str | None) -> str:
    """The console line of a finished epoch; validation's accuracies are named by the route they went through."""
    def pct(key: str) -> str:
        return f"{100 * record[key]:.1f}%" if record.get(key) is not None else "-"

    head = f"epoch {record['epoch']}/{epochs}" if record["kind"] == "epoch" else f"stopped at step {record['step']}"
    val = f"val {adv_route} route: clean" if adv_route else "val clean"
    return (f"{head}: loss {record.get('train_loss', float('nan')):.3f}, train clean {pct('train_clean_acc')} "
            f"adv {pct('train_adv_acc')} | {val} {pct('val_clean_acc')} robust {pct('val_robust_acc')}"
            f"{' (best)' if improved else ''} | {record['epoch_time']:.0f} s")
