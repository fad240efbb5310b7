"""``robust-sabn bench train``: variants trained with the same budget and seed, side by side.

Two suites: ``norms`` (BN, AuxBN, SaAuxBN, ...) and ``modern`` (the techniques of the RobustBench-era recipes,
one by one and together, on top of SaAuxBN + hybrid, and BN with all of them). ``--compile`` trains every variant
a second time with ``--compile`` (its row "<variant> compiled"), and a line under the table gives each compiled
variant's seconds per step against its eager twin's (target <= 0.75; the steps that compiled are the warm-up,
logged apart as ``compile_time``, which the line also gives). Each variant trains from the same
config (the ``fashion-mnist-small`` recipe unless ``--config`` says otherwise), then its best checkpoint (the weight
average where the variant keeps one) is scored on a fixed test subset under both protocols: *single route* (one
fixed model: clean, PGD and AutoAttack accuracy through the adv route, what RobustBench accepts) and *oracle
routing* (clean accuracy through the clean route, robust accuracy through the adv route, as the SaBN paper reports).
Every accuracy prints with its 95% interval, and every difference from the first variant with the exact McNemar
p-value of the per-image outcomes (:mod:`robust_sabn.cli.bench.paired`); ``--pool`` pools the benches of several
seeds.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ...data import as_tensors, fixed_subset, load_dataset
from ...devices import resolve_device
from ...distributed import start_processes
from ...errors import ConfigError
from ...eval import EvalSettings, evaluate, make_eval_attack
from ...limits import ATTACK_STEPS, BATCH_SIZE, EPOCHS, IMAGES
from ...model_files import load_trained_model
from ...models.arguments import ARGUMENT_RANGES
from ...rng import rng_state, set_rng_state
from ...training.config import TrainConfig
from ...training.holdout import write_heldout
from ...training.loop import Trainer, TrainResult
from ...training.run_dir import BEST, RESUMABLE, resume_config
from ..flags import InRange, add_common_flags
from .paired import Bench, Variant, bench_table, seeds_table
from .steps import COMPILED_TARGET
from .timing import machine

# label -> config overrides; other parts append rows (e.g. {"norm": "ubn"}).
TRAIN_BENCH_VARIANTS: dict[str, dict] = {
    "BN": {"norm": "bn"},
    "AuxBN": {"norm": "dual"},
    "SaAuxBN": {"norm": "sandwich"},
    "UBN": {"norm": "ubn"},
    "WeightAlign+BN": {"norm": "bn", "conv": "weightalign"},
    "WeightAlign+GN": {"norm": "gn", "conv": "weightalign"},
}
HELD_OUT = "held-out"  # extra_data of a variant: the training images the base config leaves out, written by the bench
ALL_TECHNIQUES = {"ema_decay": 0.995, "label_smoothing": 0.1, "awp_gamma": 0.005, "extra_data": HELD_OUT,
                  "lr_schedule": "cosine"}
# On top of SaAuxBN + hybrid (the base recipe): each technique with EMA (the others' baseline in every paper), then
# all together (with the hybrid loss, and with MART's); BN with all of them.
MODERN_BENCH_VARIANTS: dict[str, dict] = {
    "SaAuxBN": {"norm": "sandwich"},
    "SaAuxBN +EMA": {"norm": "sandwich", "ema_decay": 0.995},
    "SaAuxBN +EMA +LS": {"norm": "sandwich", "ema_decay": 0.995, "label_smoothing": 0.1},
    "SaAuxBN +EMA +AWP": {"norm": "sandwich", "ema_decay": 0.995, "awp_gamma": 0.005},
    "SaAuxBN MART +EMA": {"norm": "sandwich", "ema_decay": 0.995, "objective": "mart"},
    "SaAuxBN +EMA +extra": {"norm": "sandwich", "ema_decay": 0.995, "extra_data": HELD_OUT},
    "SaAuxBN all": {"norm": "sandwich", **ALL_TECHNIQUES},
    "SaAuxBN MART all": {"norm": "sandwich", **ALL_TECHNIQUES, "objective": "mart"},
    "BN all": {"norm": "bn", **ALL_TECHNIQUES},
}
SUITES = {"norms": TRAIN_BENCH_VARIANTS, "modern": MODERN_BENCH_VARIANTS}
COMPILED = " compiled"  # the label suffix of a variant's compiled twin
AA_ATTACKS = ("apgd-ce", "apgd-t")
# metric -> column: the oracle protocol's robust accuracy is the single route's (both attack the adv route)
METRICS = {"clean": "single route: clean", "pgd": "single route: PGD", "aa": "single route: AA",
           "clean_oracle": "oracle: clean (clean route)"}


def score(config: TrainConfig, checkpoint: Path, test: tuple[torch.Tensor, torch.Tensor],
          pgd_steps: int, aa_size: int = 0) -> dict[str, str]:
    """Per-image test outcomes (a report's ``per_image``) of a checkpoint (its weight average when it has one) under
    ``robust-sabn eval``'s ``pgd-K``, per metric of :data:`METRICS`: clean and PGD through the adv route, and clean
    through the clean route (oracle routing; the adv route's for a model without routes); with ``aa_size``,
    AutoAttack's APGD-CE and APGD-T (1 restart, as in its standard version) through the adv route on the first
    ``aa_size`` of the test images."""
    loaded = load_trained_model(checkpoint)
    settings = EvalSettings(config.threat, f"pgd-{pgd_steps}", config.seed, 2 * config.batch_size,
                            resolve_device(config.device), progress=config.progress)
    routes = dict(route=loaded.route(), clean_route=config.clean_route)
    report = evaluate(loaded.model, *test, settings, **routes)
    outcomes = {"clean": report.per_image["correct"], "pgd": report.per_image["robust"],
                "clean_oracle": report.per_image.get("correct_clean_route", report.per_image["correct"])}
    if aa_size:
        x, y = test
        attack = make_eval_attack("autoattack", "custom", AA_ATTACKS, aa_restarts=1)
        outcomes["aa"] = evaluate(loaded.model, x[:aa_size], y[:aa_size], replace(settings, attack=attack),
                                  **routes).per_image["robust"]
    return outcomes


def train_interleaved(configs: dict[str, TrainConfig], resume: bool = False) -> dict[str, TrainResult]:
    """Train several runs one epoch each in turn, so that load drifting on the machine slows all of them alike.
    Each run keeps its own random generators: it computes exactly what it computes alone. With ``resume``, a run
    whose folder holds a checkpoint continues from it (as ``robust-sabn train --resume``; a finished run only
    reports), after checking that it was started with the same config."""
    with start_processes(next(iter(configs.values())).device) as processes:
        trainers: dict[str, Trainer] = {}
        try:
            states = {}
            for label, config in configs.items():
                again = resume and any((Path(config.out_dir) / name).is_file() for name in RESUMABLE)
                if again:
                    # the bench's settings as overrides: any that differs from the run's own config is refused
                    resume_config(config.out_dir, **{k: v for k, v in config.to_dict().items() if k != "out_dir"})
                trainers[label] = Trainer(config, processes, resume=again)
                states[label] = rng_state(processes.device)
            while not all(t.done() for t in trainers.values()):
                for label, trainer in trainers.items():
                    if not trainer.done():
                        set_rng_state(states[label], processes.device)
                        trainer.run_epoch()
                        states[label] = rng_state(processes.device)
            results = {}
            for label, trainer in trainers.items():
                set_rng_state(states[label], processes.device)
                results[label] = trainer.finish_run()
            return results
        finally:
            for trainer in trainers.values():
                trainer.release()


def variant_configs(base: TrainConfig, out_dir: str | Path, variants: dict[str, dict]) -> dict[str, TrainConfig]:
    """The config of each variant, in ``out_dir/<label>``; extra data named :data:`HELD_OUT` is the training
    images ``base`` leaves out of its labeled set, written once to ``out_dir/held-out.npz``."""
    extra = Path(out_dir) / f"{HELD_OUT}.npz"
    if any(v.get("extra_data") == HELD_OUT for v in variants.values()) and not extra.is_file():
        write_heldout(base, extra)
    configs = {}
    for label, overrides in variants.items():
        settings = {**overrides, "out_dir": str(Path(out_dir) / label)}
        if settings.get("extra_data") == HELD_OUT:
            settings["extra_data"] = str(extra)
        configs[label] = dataclasses.replace(base, **settings)
    return configs


def bench_train(base: TrainConfig, out_dir: str | Path, test_size: int | None = 1000, pgd_steps: int = 20,
                variants: dict[str, dict] | None = None, aa_size: int = 500, resume: bool = False) -> str:
    """Train every variant in ``out_dir/<label>``, score each on the same test images, write the per-image outcomes
    to ``out_dir/bench-train.json`` and return the Markdown table of :func:`~robust_sabn.cli.bench.paired.bench_table`
    (intervals, and differences from the first variant with McNemar p-values); ``resume`` continues the variants
    an earlier call left in ``out_dir`` (see :func:`train_interleaved`)."""
    variants = TRAIN_BENCH_VARIANTS if variants is None else variants
    splits = load_dataset(base.dataset, base.data_dir, download=base.download, val_size=base.val_size,
                          seed=base.seed)
    test = as_tensors(fixed_subset(splits.test, min(test_size, len(splits.test)) if test_size else None, base.seed))
    aa_size = min(aa_size, len(test[1]))
    configs = variant_configs(base, out_dir, variants)
    results = train_interleaved(configs, resume)
    scored = {}
    for label, result in results.items():
        times = [r["epoch_time"] for r in result.records if r["kind"] == "epoch"] or [result.records[-1]["time"]]
        if base.progress:
            print(f"scoring {label}: {result.run_dir / BEST}", file=sys.stderr, flush=True)
        scored[label] = Variant(score(configs[label], result.run_dir / BEST, test, pgd_steps, aa_size),
                                sum(times) / len(times))
    aa = f", AA = AutoAttack's {' + '.join(AA_ATTACKS)} on the first {aa_size}" if aa_size else ""
    header = (f"{base.dataset}, {base.arch}{f' width {base.width}' if base.width else ''}, objective "
              f"{base.objective}, PGD-{base.steps} training ({base.threat.label}), {base.epochs} "
              f"epochs x {base.train_size or 'all'} images, seed {base.seed}, variants trained epoch by epoch in "
              f"turn; best.pt scored on {len(test[1])} test images, eval's pgd-{pgd_steps}{aa}; trained on "
              f"{resolve_device(base.device)}, {machine()}")
    bench = Bench(header, dict(METRICS), scored)
    bench.save(out_dir)
    return bench_table(bench) + compiled_line(results)


def compiled_line(results: dict[str, TrainResult]) -> str:
    """Under the table, each compiled twin's seconds per training step against its eager variant's (the steps that
    compiled, the warm-up, left out of both time and count), and its warm-up."""
    pairs = [(label, label.removesuffix(COMPILED)) for label in results
             if label.endswith(COMPILED) and label.removesuffix(COMPILED) in results]
    if not pairs:
        return ""
    parts = [f"{eager} {step_seconds(results[label]) / step_seconds(results[eager]):.2f} (warm-up "
             f"{sum(r.get('compile_time', 0.0) for r in results[label].records if r['kind'] != 'step'):.0f} s)"
             for label, eager in pairs]
    return (f"\n\nCompiled / eager seconds per step (target <= {COMPILED_TARGET}; warm-up left out): "
            + "; ".join(parts) + "\n")


def step_seconds(result: TrainResult) -> float:
    """Seconds per training step over the run's epochs, without the steps that compiled."""
    epochs = [r for r in result.records if r["kind"] == "epoch"]
    steps = [r["step"] - before for r, before in zip(epochs, [0] + [r["step"] for r in epochs])]
    counted = sum(steps) - sum(r.get("compile_steps", 0) for r in epochs)
    return sum(r["epoch_time"] for r in epochs) / max(counted, 1)


def with_compiled(variants: dict[str, dict]) -> dict[str, dict]:
    """Every variant followed by its compiled twin."""
    return {name: overrides for label, base in variants.items()
            for name, overrides in ((label, base), (label + COMPILED, {**base, "compile": True}))}


def run(args: argparse.Namespace) -> int:
    if args.pool:
        benches = [Bench.load(folder) for folder in args.pool]
        print("\n\n".join([*map(bench_table, benches), seeds_table(benches)]))
        return 0
    overrides = {k: v for k, v in {"epochs": args.epochs, "train_size": args.train_size, "width": args.width,
                                   "steps": args.steps, "seed": args.seed, "device": args.device,
                                   "data_dir": args.data_dir, "batch_size": args.batch_size,
                                   "val_size": args.val_size, "milestones": args.milestones}.items()
                 if v is not None}
    if not args.progress:
        overrides["progress"] = False
    base = TrainConfig.from_file(args.config, **overrides)
    variants = SUITES[args.suite]
    if args.variants:
        unknown = [v for v in args.variants if v not in variants]
        if unknown:
            raise ConfigError(f"unknown variant(s) {', '.join(unknown)} in suite {args.suite}; known: "
                              f"{', '.join(map(repr, variants))}")
        variants = {v: variants[v] for v in args.variants}
    if args.compile:
        variants = with_compiled(variants)
    out_dir = args.out_dir or f"runs/bench-train-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.resume and not args.out_dir:
        raise ConfigError("--resume continues the variants of an earlier bench; name its folder with --out-dir")
    print(bench_train(base, out_dir, args.test_size, args.pgd_steps, variants, args.aa_size, args.resume))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Train each variant from the same config (a recipe or file), budget and seed, interleaved "
                          "epoch by epoch, then score each best.pt under both protocols.")
    parser.add_argument("--config", default="fashion-mnist-small", help="base config file or recipe")
    parser.add_argument("--suite", choices=list(SUITES), default="norms",
                        help="norms: " + ", ".join(TRAIN_BENCH_VARIANTS) + "; modern: "
                             + ", ".join(MODERN_BENCH_VARIANTS))
    parser.add_argument("--variants", nargs="+", help="a subset of the suite's variants")
    parser.add_argument("--epochs", action=InRange, limits=EPOCHS)
    parser.add_argument("--milestones", action=InRange, limits=EPOCHS.but(example="150"), nargs="+",
                        help="epochs of the step schedule's decays")
    parser.add_argument("--train-size", action=InRange, limits=IMAGES)
    parser.add_argument("--batch-size", action=InRange, limits=BATCH_SIZE)
    parser.add_argument("--val-size", action=InRange, limits=IMAGES)
    parser.add_argument("--width", action=InRange, limits=ARGUMENT_RANGES["width"])
    parser.add_argument("--steps", action=InRange, limits=ATTACK_STEPS.but(example="7"),
                        help="PGD steps of the training attack")
    parser.add_argument("--test-size", action=InRange, limits=IMAGES, default=1000)
    parser.add_argument("--pgd-steps", action=InRange, limits=ATTACK_STEPS.but(example="20"), default=20,
                        help="steps of the test attack (eval's pgd-K)")
    parser.add_argument("--aa-size", action=InRange, limits=IMAGES.but(low=0, example="500"), default=500,
                        help="test images attacked by AutoAttack's APGD-CE + APGD-T (0: none)")
    parser.add_argument("--compile", action="store_true",
                        help="train every variant also with --compile (torch.compile), interleaved with the eager one")
    parser.add_argument("--out-dir", help="folder for the variants' run folders (default runs/bench-train-<time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the variants left in --out-dir by an interrupted bench (finished ones are "
                             "only scored); each must have been started with the same settings")
    parser.add_argument("--pool", nargs="+", metavar="OUT_DIR",
                        help="train nothing: print the tables of these finished benches (e.g. one per --seed) and "
                             "their variants pooled over the benches, with paired tests")
    add_common_flags(parser, seed=None)
