"""``robust-sabn eval``: evaluate a run folder, a checkpoint or an exported model; JSON + Markdown report."""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from ..distributed import Processes, start_processes
from ..errors import ConfigError, UserError
from ..eval.attacks import make_eval_attack
from ..eval.evaluate import EvaluationReport, evaluate
from ..eval.front import front_table, mixture_front, write_front
from ..eval.numerics import NUMERICS
from ..eval.recalibration import training_recalibration
from ..eval.report import ADVERSARIALS, write_adversarials, write_report
from ..eval.settings import EvalSettings
from ..eval.state import STATE, remove_state
from ..eval.sweep import eps_sweep, plot_sweep
from ..io import all_or_nothing, atomic_write_text
from ..mixing import parse_tradeoffs
from ..model_files import LoadedModel
from ..tables import markdown_table, percent
from ..threat import Threat
from ..training.trackers import TRACKERS, TrackedRun, Trackers
from .flags import add_common_flags, add_model_arguments, add_recalibrate_flag
from .target import EvaluatedModel

DEFAULT_SWEEP_ATTACK = "pgd-20"


def run(args: argparse.Namespace) -> int:
    with start_processes(args.device) as processes:  # one process, or this one of torchrun's
        return _run(args, processes)


def _run(args: argparse.Namespace, processes: Processes) -> int:
    target = EvaluatedModel.from_args(args)
    loaded, route, threat, clean_route = target.loaded, target.route, target.threat, target.clean_route
    sweep = ([Threat.parse(threat.norm, eps, "--eps-sweep value", "--eps-sweep").eps
              for eps in args.eps_sweep.split(",") if eps.strip()] if args.eps_sweep else None)
    tradeoffs = route_mix(args, sweep)
    recalibration = (training_recalibration(loaded, args.recalibrate, threat, args.data_dir, args.seed)
                     if args.recalibrate is not None else None)  # only with --route-mix (route_mix checks)
    attack = make_eval_attack(args.attack or (DEFAULT_SWEEP_ATTACK if sweep else "autoattack"), args.version)
    settings = EvalSettings(threat, attack, args.seed, args.batch_size, processes.device, args.numerics,
                            args.progress and processes.is_main, processes, args.save_adversarials)
    mixes = "route-mix" + (f"-recalibrated-{args.recalibrate}" if args.recalibrate is not None else "")
    suffixes = [".json", ".md", ".png"] if sweep or tradeoffs else [".json", ".md"]
    if args.save_adversarials and not (sweep or tradeoffs):
        suffixes.append(ADVERSARIALS)
    stem = target.report_path(args.out, settings, mixes if tradeoffs else route or "plain", suffixes,
                              radius="sweep" if sweep else None)
    state_dir = stem.with_name(stem.name + STATE)
    log_dir = tracked_run(args, loaded)
    x, y = target.images(args.data_dir, args.n_examples)
    dataset = target.dataset
    if processes.is_main:
        shards = f", {processes.world_size} processes" if processes.distributed else ""
        print(f"evaluating {target.describe(len(y))}{shards}; finished batches are kept in {state_dir} until the "
              "report is written", flush=True)
    model = loaded.model.to(processes.device)

    if tradeoffs is not None:
        points = mixture_front(model, x, y, tradeoffs, settings, routes=(clean_route, route), state_dir=state_dir,
                               recalibration=recalibration)

        def write() -> None:
            write_front(points, stem, clean_route, route, title=f"{loaded.path}, {len(y)} {dataset} test images",
                        recalibration=recalibration)
            track(args.log, log_dir, loaded, {f"{stem.name}/t-{p.t:g}": p.report for p in points})
            print(front_table(points, clean_route, route))
            print(f"wrote {stem}.json, .md and .png")
        finish(processes, state_dir, write)
        return 0

    if sweep is not None:
        reports = eps_sweep(model, x, y, sweep, settings, route=route, clean_route=clean_route, state_dir=state_dir)
        rows = [[r.threat.eps_str, percent(r.clean_acc, r.n, 2), percent(r.robust_acc, r.n, 2)] for r in reports]
        table = markdown_table([f"{threat.norm} eps", "clean acc (%, 95% CI)",
                                f"{reports[0].attack_description} robust acc (%, 95% CI)"], rows)

        def write() -> None:
            with all_or_nothing():
                atomic_write_text(stem.with_name(stem.name + ".json"),
                                  json.dumps([r.to_dict() for r in reports], indent=2) + "\n")
                atomic_write_text(stem.with_name(stem.name + ".md"), table + "\n")
                plot_sweep(reports, stem.with_name(stem.name + ".png"), title=f"{loaded.path.name}, {len(y)} images")
                for r in reports:
                    if r.adversarials is not None:
                        write_adversarials(r, stem.with_name(f"{stem.name}-eps-{r.threat.eps_str.replace('/', '_')}"))
            track(args.log, log_dir, loaded, {f"{stem.name}/eps-{r.threat.eps_str}": r for r in reports})
            print(table)
            print(f"wrote {stem}.json, .md and .png")
        finish(processes, state_dir, write)
        return 0

    report = evaluate(model, x, y, settings, route=route, clean_route=clean_route, state_dir=state_dir)
    target.label(report)

    def write() -> None:
        paths = write_report(report, stem)
        track(args.log, log_dir, loaded, {stem.name: report})
        print(paths[1].read_text())
        print(f"wrote {', '.join(str(path) for path in paths)}")
    finish(processes, state_dir, write)
    return 0


def tracked_run(args: argparse.Namespace, loaded: LoadedModel) -> Path | None:
    """The run folder ``--log`` writes to: ``--log-dir``, else the folder of the training checkpoint evaluated; the
    trackers are checked now, before the attack."""
    if not args.log:
        return None
    Trackers.check(args.log)
    if args.log_dir:
        return Path(args.log_dir)
    if loaded.step is None:
        raise ConfigError(f"{loaded.path} is not a training checkpoint, so --log has no run to add to; name one "
                          "with --log-dir")
    return loaded.path.parent


def track(names: list[str] | None, log_dir: Path | None, loaded: LoadedModel,
          reports: dict[str, EvaluationReport]) -> None:
    """Send each report's accuracies per protocol, with their intervals, to the trackers of ``--log`` as an ``eval``
    record at the checkpoint's training step, under ``eval/<label>/<protocol>/...``."""
    if not names:
        return
    record: dict[str, object] = {"kind": "eval", "step": loaded.step or 0}
    for label, report in reports.items():
        for name, p in report.protocols.items():
            tag = f"eval/{label}/{name.replace(' ', '_')}"
            for key in ("clean_acc", "robust_acc"):
                low, high = getattr(p, f"{key}_ci")
                record.update({f"{tag}/{key}": getattr(p, key), f"{tag}/{key}_ci_low": low,
                               f"{tag}/{key}_ci_high": high})
    trackers = Trackers(names, TrackedRun(log_dir, resume_step=None))
    try:
        trackers.record(record)
    finally:
        trackers.close()


def route_mix(args: argparse.Namespace, sweep: list | None) -> list[float] | None:
    """The trade-offs of ``--route-mix`` (None without it), after checking it combines with the other flags."""
    if args.route_mix is None:
        if args.recalibrate is not None:
            raise ConfigError("--recalibrate re-estimates the BN statistics of route mixtures; use it with "
                              "--route-mix, or drop it")
        return None
    if sweep or args.save_adversarials:
        raise ConfigError("--route-mix evaluates one model per mixture at one eps; drop --eps-sweep and "
                          "--save-adversarials, or evaluate one route or mixture at a time")
    return parse_tradeoffs(args.route_mix)


def finish(processes: Processes, state_dir: Path, write: Callable[[], None]) -> None:
    """The first process writes the report; once it is written, every process deletes its state folder (they may
    be on different machines). A failed write keeps the state, so that the same command finishes at once."""
    error = None
    if processes.is_main:
        try:
            write()
        except UserError as err:
            error = err
    if processes.broadcast(error is None):
        remove_state(state_dir)
    if error is not None:
        raise error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Evaluate on the first N test images with the model folded on one route, in eval mode, in "
                          "fixed batches seeded from --seed. Reports both protocols for routed models: single route "
                          "(what RobustBench accepts) and oracle routing (clean route for clean accuracy, as the SaBN "
                          "paper reports).")
    add_model_arguments(parser)
    parser.add_argument("--attack", help="autoattack (default), apgd-ce, pgd-K (K steps, pgd = pgd-20) or cw-K")
    parser.add_argument("--clean-route", help="route for the oracle protocol's clean accuracy (default: clean)")
    parser.add_argument("--out", help="report path without suffix (default: <checkpoint folder>/eval/"
                                      "<checkpoint>-<settings>; for an export, its reports folder; for a Hugging "
                                      "Face folder, ./eval/<folder>)")
    parser.add_argument("--eps-sweep", metavar="EPS,EPS,...",
                        help="robust accuracy at each radius, drawn as a PNG (PGD-20 unless --attack apgd-ce/pgd-K/cw)")
    parser.add_argument("--route-mix", metavar="GRID",
                        help="evaluate the mixture (1-t) clean route + t adv route (--clean-route, --route) for each t "
                             "of GRID, 'start:stop:step' or 't,t,...' (e.g. 0:1:0.1): a table and a Pareto plot of "
                             "clean against robust accuracy (docs/route-mixing.md)")
    add_recalibrate_flag(parser)
    parser.add_argument("--log", nargs="+", metavar="NAME", choices=list(TRACKERS),
                        help=f"also log the accuracies to these trackers ({', '.join(TRACKERS)}) of the training run "
                             "evaluated, at its checkpoint's step (docs/training.md#experiment-tracking)")
    parser.add_argument("--log-dir", metavar="RUN_DIR",
                        help="the run folder --log adds to (default: the folder of the training checkpoint)")
    parser.add_argument("--numerics", default="exact", choices=list(NUMERICS),
                        help="exact (default: the model's own float32 computation), or a faster form that can change "
                             "a prediction and is named in the report: channels-last, bf16, compiled (torch.compile; "
                             "compiled code is cached in $ROBUST_SABN_CACHE, default ~/.cache/robust-sabn)")
    parser.add_argument("--save-adversarials", action="store_true",
                        help=f"also write <report>{ADVERSARIALS}: the adversarial images of the points that broke, "
                             "with their indices, labels and predictions (tensors only)")
    add_common_flags(parser)
