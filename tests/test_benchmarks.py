"""``robust-sabn bench norms`` and ``bench eval`` with tiny settings: every row present, ratios computed, and the
AutoAttack pair agreeing on robust accuracy (the speed numbers themselves live in README.md, not in tests)."""
import math
import os

import pytest
import torch
from helpers import write_run_dir

from robust_sabn.cli import main
from robust_sabn.cli.bench.norms import NORM_VARIANTS
from robust_sabn.cli.bench.timing import Times, Timing, machine

pytestmark = pytest.mark.usefixtures("one_thread")


def table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.mark.channels_last
@pytest.mark.parametrize("width, flags, layout", [
    ("16", [], "channels_last"), ("16", ["--channels-last"], "channels_last"),
    ("4", [], "NCHW"), ("16", ["--no-channels-last"], "NCHW"),
])
def test_bench_norms_prints_every_variant_and_both_joined_batch_rows(capsys, width, flags, layout):
    argv = ["bench", "norms", "--width", width, "--batch-size", "4", "--image-size", "8", "--repeats", "1",
            "--warmup", "0", *flags]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    labels = [row[0] for row in rows]
    assert labels[:len(NORM_VARIANTS)] == list(NORM_VARIANTS)
    joined, scaling, adversarial, attack_pass, logging = labels[len(NORM_VARIANTS):]
    assert joined.startswith("SaBN split_routes") and scaling.startswith("BN, no routes")
    assert adversarial.startswith("BN: adversarial step (madry, PGD-5) vs 6 plain steps (analytic limit 0.72)")
    assert attack_pass.startswith("BN: attack pass") and logging.startswith("BN: logging forward")
    assert rows[0][2] == "1.000" and all(float(row[2]) > 0 for row in rows)
    quartiles = [[float(q) for q in row[4].split("-")] for row in rows]
    assert quartiles[0] == [1.0, 1.0] and all(0 < low <= high for low, high in quartiles)
    assert all(low == float(row[2]) == high for (low, high), row in zip(quartiles, rows))  # one round: one ratio
    assert f"x8x8 ({layout})," in out and machine() in out  # the header names the CPU
    assert ("oneDNN issue 6035" in out) == (width == "4")  # the training default, NCHW for width 4, says why


def test_round_ratios_cancel_a_change_of_speed_between_rounds():
    # The machine runs three times slower in the second round: each round's ratio is 0.5, or close to it in the
    # third, while the ratio of the two medians (1.1 / 2.4) would read the third round's 0.458.
    times = Times({"variant": [1.0, 3.0, 1.1], "baseline": [2.0, 6.0, 2.4]})
    assert times.ratio("variant", "baseline") == 0.5
    assert times.ratio("variant", "baseline", scale=0.5) == 1.0
    low, high = times.quartiles("variant", "baseline")
    assert math.isclose(low, (1.1 / 2.4 + 0.5) / 2) and high == 0.5
    assert Times({"a": [2.0], "b": [4.0]}).quartiles("a", "b") == (0.5, 0.5)
    assert (Timing(3).timed_rounds, Timing(1).timed_rounds) == ("3 rounds", "1 round")  # as headers say it


def test_bench_norms_compile_needs_a_warm_up_round(capsys):
    assert main(["bench", "norms", "--width", "4", "--batch-size", "2", "--image-size", "8", "--warmup", "0",
                 "--compile"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--warmup 1" in err


@pytest.mark.slow
@pytest.mark.parametrize("case", ["synthetic", "checkpoint"])
def test_bench_eval_times_both_pairs_and_autoattack_agrees_with_pyautoattack(capsys, tmp_path, case):
    model = ["--width", "4", "--image-size", "8", "--eps", "8/255", "--numerics", "exact", "bf16", "compiled",
             "--pgd-examples", "12"]
    if case == "checkpoint":
        model = ["--checkpoint", str(write_run_dir(tmp_path, eps=2 / 255, n_test=8)), "--sharded-attack", "pgd-2",
                 "--numerics", "exact", "bf16"]
    argv = ["bench", "eval", *model, "--n-examples", "8", "--batch-size", "4", "--version", "custom",
            "--aa-attacks", "apgd-ce", "--repeats", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    sharded = [f"robust-sabn eval --attack pgd-2: 2 processes x 1 thread vs {baseline} thread(s)"
               for baseline in ("1 x 1", f"1 x {len(os.sched_getaffinity(0))}")]
    compiled = ["AutoAttack custom (apgd-ce), numerics compiled", "PGD-10 (eps/4 steps, 12 images), numerics exact",
                "PGD-10 (eps/4 steps, 12 images), numerics compiled",
                "compile warm-up from an empty compile cache, target < 60 s",
                "compile warm-up from the cache (median of the compiled calls), target < 5 s"]
    assert [row[0] for row in rows] == ["AutoAttack custom (apgd-ce), numerics exact",
                                        "AutoAttack custom (apgd-ce), numerics bf16",
                                        *(compiled if case == "synthetic" else [
                                            "PGD-10 (eps/4 steps, 8 images), numerics exact", *sharded])]
    ours, baseline = rows[0][6].split(" / ")
    assert ours == baseline and rows[0][7] == "8/8 images"  # the exact form gives pyautoattack's own answer
    assert rows[0][4] == "0.800" and rows[1][4] == ""  # the exact form's target; none for bf16
    assert all(float(row[3]) > 0 for row in rows if row[3])
    spreads = [[float(q) for q in row[5].split("-")] for row in rows if row[5]]
    assert len(spreads) == len([row for row in rows if row[3]])  # each ratio with its quartiles over the rounds
    assert all(low == float(row[3]) == high for (low, high), row in zip(spreads, [r for r in rows if r[3]]))
    assert all(row[-2].endswith("(identical per-image results)") for row in rows if row[0] in sharded)
    if case == "synthetic":
        assert rows[2][4] == "0.550" and rows[2][7].endswith("/8 images") and rows[4][7].endswith("/12 with exact")
        assert float(rows[-2][1]) > float(rows[-1][1]) > 0  # compiling from scratch takes longer than from the cache
    assert ("last.pt (cifar10, route adv), first 8 test images" in out) == (case == "checkpoint")
    assert f"eps {(2 if case == 'checkpoint' else 8) / 255:.4f}" in out and machine() in out


def test_bench_data_times_the_batched_crop_against_the_loop(capsys):
    assert main(["bench", "data", "--batch-size", "8", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith(f"medians of 1 round, {machine()}")
    rows = [line for line in out.splitlines() if line.startswith("| cpu")]
    assert len(rows) == 1 and len(rows[0].split("|")) == 7
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[4] == f"{float(cells[3]):.3f}-{float(cells[3]):.3f}"  # one round: its ratio is both quartiles


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_bench_gpu_without_a_gpu_is_one_line(capsys):
    assert main(["bench", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA" in err and "bench norms" in err
