"""Variants evaluated on the same images, compared as the statistics of :mod:`robust_sabn.stats` allow: every
accuracy with its 95% Wilson interval, every difference against the first variant with the exact McNemar p-value
of the two variants' per-image outcomes; and several seeds of one benchmark pooled.

A benchmark's results are a :class:`Bench`: per variant, one string of per-image outcomes ("0"/"1", a report's
``per_image``) per metric, all variants of one seed on the same images.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ...errors import ConfigError
from ...io import atomic_write_text
from ...stats import mcnemar_exact, paired_counts
from ...tables import markdown_table, percent

RESULTS = "bench-train.json"  # a bench's results in its --out-dir
FORMAT = "robust-sabn-bench-train/1"


@dataclass
class Variant:
    """One variant's per-image outcomes per metric, and its training seconds per epoch."""

    outcomes: dict[str, str]
    seconds_per_epoch: float


@dataclass
class Bench:
    """One benchmark run (one seed): its description, its metrics (name -> column title) and its variants, the
    first being the one every other is compared with."""

    header: str
    metrics: dict[str, str]
    variants: dict[str, Variant]

    def save(self, out_dir: str | Path) -> Path:
        return atomic_write_text(Path(out_dir) / RESULTS, json.dumps({"format": FORMAT, **asdict(self)}) + "\n")

    @classmethod
    def load(cls, out_dir: str | Path) -> Bench:
        path = Path(out_dir) / RESULTS
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot read {path} ({err}); score that bench again with `robust-sabn bench train "
                              "--resume --out-dir` and its settings") from None
        try:
            if values.pop("format") == FORMAT:
                return cls(**{**values, "variants": {label: Variant(**v) for label, v in values["variants"].items()}})
        except (AttributeError, KeyError, TypeError):
            pass
        raise ConfigError(f"{path} is not a bench train result ({FORMAT}); score that bench again")


def accuracy(outcomes: str) -> float:
    return outcomes.count("1") / len(outcomes)


def format_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def compared(outcomes: str, first: str | None) -> str:
    """An accuracy with its interval; against ``first`` (the same images' outcomes under the first variant), the
    difference in points and the exact McNemar p-value."""
    cell = percent(accuracy(outcomes), len(outcomes))
    if first is None:
        return cell
    only_this, only_first = paired_counts(outcomes, first)
    return (f"{cell}; {100 * (accuracy(outcomes) - accuracy(first)):+.1f}, "
            f"p {format_p(mcnemar_exact(only_this, only_first))}")


def bench_table(bench: Bench) -> str:
    """The header, then one row per variant: each metric in % with its 95% interval and, after the first row, the
    difference against the first row in points with its McNemar p; seconds per epoch and their ratio."""
    first_label, *_ = bench.variants
    first = bench.variants[first_label]
    rows = []
    for label, variant in bench.variants.items():
        against = None if label == first_label else first
        rows.append([label, *(compared(variant.outcomes[m], against and against.outcomes[m]) if m in variant.outcomes
                              else "-" for m in bench.metrics),
                     f"{variant.seconds_per_epoch:.1f}", f"{variant.seconds_per_epoch / first.seconds_per_epoch:.2f}"])
    note = (f"Accuracies in % (95% Wilson interval); after the first row: the difference from {first_label} in points "
            "and the exact McNemar p-value on the same images.")
    return (f"{bench.header}\n\n{note}\n\n"
            + markdown_table(["variant", *bench.metrics.values(), "s / epoch", "time vs first"], rows))


def seeds_table(benches: Sequence[Bench]) -> str:
    """Several seeds of one benchmark (the same variants and metrics; each seed may test other images). Per variant
    and metric: the mean over seeds with the 95% Wilson interval of all its images pooled, the value of each seed,
    the mean difference from the first variant, the exact McNemar p-value of the per-image outcomes pooled over
    seeds (paired within each seed), the seeds where the variant scored higher and lower, and the exact sign test
    over seeds (McNemar's test on the seeds' directions)."""
    labels, metrics = list(benches[0].variants), benches[0].metrics
    if any(list(b.variants) != labels or b.metrics != metrics for b in benches):
        raise ConfigError("the benches to pool must have the same variants and metrics, in the same order")
    first = labels[0]
    rows = []
    for label in labels:
        for metric, title in metrics.items():
            runs = [(b.variants[label].outcomes.get(metric), b.variants[first].outcomes.get(metric)) for b in benches]
            if any(mine is None for mine, _ in runs):
                continue
            pooled = "".join(mine for mine, _ in runs)
            row = [label, title, percent(accuracy(pooled), len(pooled)),
                   ", ".join(f"{100 * accuracy(mine):.1f}" for mine, _ in runs)]
            if label == first:
                rows.append(row + ["", "", "", ""])
                continue
            only_mine, only_first = (sum(c) for c in zip(*(paired_counts(m, f) for m, f in runs)))
            higher = sum(accuracy(m) > accuracy(f) for m, f in runs)
            lower = sum(accuracy(m) < accuracy(f) for m, f in runs)
            difference = sum(accuracy(m) - accuracy(f) for m, f in runs) / len(runs)
            rows.append(row + [f"{100 * difference:+.1f}", format_p(mcnemar_exact(only_mine, only_first)),
                               f"{higher} / {lower}", format_p(mcnemar_exact(higher, lower))])
    headers = ["variant", "metric", f"mean of {len(benches)} seeds (95% CI, images pooled)", "per seed",
               f"mean difference from {first} (points)", "McNemar p (images pooled)", "seeds higher / lower",
               "sign test p (seeds)"]
    return markdown_table(headers, rows)
