"""``robust-sabn bench train`` with tiny settings: one row per registered variant, both protocols."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import write_fashion_mnist

from robust_sabn import ConfigError
from robust_sabn.cli import main
from robust_sabn.cli.bench.paired import Bench
from robust_sabn.cli.bench.timing import machine
from robust_sabn.cli.bench.train import METRICS, TRAIN_BENCH_VARIANTS, train_interleaved, variant_configs
from robust_sabn.io import load_checkpoint, save_checkpoint
from robust_sabn.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_bench_train_prints_one_row_per_variant(tmp_path, capsys, monkeypatch):
    write_fashion_mnist(tmp_path / "data", n_train=64, n_test=12)
    # rows come from the registry
    monkeypatch.setitem(TRAIN_BENCH_VARIANTS, "extra row", {"norm": "sandwich", "lr": 0.05})
    argv = ["bench", "train", "--data-dir", str(tmp_path / "data"), "--epochs", "1", "--train-size", "32",
            "--batch-size", "16", "--val-size", "16", "--width", "4", "--steps", "1", "--test-size", "12",
            "--pgd-steps", "2",
            "--device", "cpu", "--out-dir", str(tmp_path / "bench"), "--no-progress"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.endswith(f"; trained on cpu, {machine()}") for line in lines)  # the header: where it was timed
    table = [line for line in lines if line.startswith("| ")]
    assert table[0] == "| " + " | ".join(["variant", *METRICS.values(), "s / epoch", "time vs first"]) + " |"
    rows = [line.split(" | ")[0].removeprefix("| ") for line in table[1:]]
    assert rows == list(TRAIN_BENCH_VARIANTS)
    bn = table[1].split(" | ")
    assert bn[1] == bn[4]  # plain BN: no clean route, the oracle's clean accuracy is the single route's
    assert "; " in table[2].split(" | ")[1] and ", p " in table[2].split(" | ")[1]  # difference from BN, p-value
    bench = Bench.load(tmp_path / "bench")  # the per-image outcomes, 12 test images per metric
    assert list(bench.variants) == list(TRAIN_BENCH_VARIANTS)
    assert all(len(bits) == 12 for v in bench.variants.values() for bits in v.outcomes.values())
    for label in TRAIN_BENCH_VARIANTS:
        assert (tmp_path / "bench" / label / "best.pt").is_file()


@pytest.mark.slow
def test_modern_suite_trains_on_held_out_extra_data_and_scores_the_weight_average(tmp_path, capsys):
    write_fashion_mnist(tmp_path / "data", n_train=96, n_test=12)
    argv = ["bench", "train", "--suite", "modern", "--variants", "SaAuxBN +EMA +extra", "BN all",
            "--data-dir", str(tmp_path / "data"), "--epochs", "1", "--train-size", "32", "--batch-size", "16",
            "--val-size", "16", "--width", "4", "--steps", "1", "--test-size", "12", "--pgd-steps", "2",
            "--aa-size", "8", "--device", "cpu", "--out-dir", str(tmp_path / "bench"), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| SaAuxBN") or line.startswith("| BN")]
    assert [row[0] for row in rows] == ["| SaAuxBN +EMA +extra", "| BN all"]
    assert all(0 <= float(row[3].split(" (")[0]) <= 100 for row in rows)
    assert all(len(bits) == 8 for bits in (v.outcomes["aa"] for v in Bench.load(tmp_path / "bench").variants.values()))
    assert "apgd-ce + apgd-t on the first 8" in out
    with np.load(tmp_path / "bench" / "held-out.npz") as npz:
        assert npz["image"].shape == (96 - 16 - 32, 28, 28, 1)  # the training images outside the labeled 32
    saved = load_checkpoint(tmp_path / "bench" / "BN all" / "best.pt")
    assert saved["config"]["extra_data"] == str(tmp_path / "bench" / "held-out.npz") and "ema" in saved
    assert saved["config"]["awp_gamma"] > 0 and saved["config"]["lr_schedule"] == "cosine"


@pytest.mark.slow
def test_interleaved_runs_compute_what_they_compute_alone(tmp_path):
    write_fashion_mnist(tmp_path / "data", n_train=64, n_test=8)
    base = TrainConfig(dataset="fashion-mnist", data_dir=str(tmp_path / "data"), arch="resnet_small", width=4,
                       eps=0.1, steps=1, val_steps=1, val_size=16, epochs=2, batch_size=16, device="cpu",
                       progress=False)
    configs = {label: dataclasses.replace(base, norm=norm, out_dir=str(tmp_path / label))
               for label, norm in (("BN", "bn"), ("SaBN", "sandwich"))}
    results = train_interleaved(configs)
    assert [r["kind"] for r in results["SaBN"].records if r["kind"] != "step"] == ["epoch", "epoch"]
    train(dataclasses.replace(configs["SaBN"], out_dir=str(tmp_path / "alone")))
    together = load_checkpoint(tmp_path / "SaBN" / "last.pt")["model"]
    alone = load_checkpoint(tmp_path / "alone" / "last.pt")["model"]
    assert all(torch.equal(together[k], alone[k]) for k in alone)


@pytest.mark.slow
def test_an_interrupted_bench_resumes_bit_for_bit_and_refuses_other_settings(tmp_path):
    """Variants cut after their first epoch (as a killed bench leaves them) continue to what an uninterrupted
    bench computes; a variant started with other settings is refused."""
    write_fashion_mnist(tmp_path / "data", n_train=64, n_test=8)
    base = TrainConfig(dataset="fashion-mnist", data_dir=str(tmp_path / "data"), arch="resnet_small", width=4,
                       eps=0.1, steps=1, val_steps=1, val_size=16, epochs=2, batch_size=16, device="cpu",
                       progress=False)
    variants = {"BN": {"norm": "bn"}, "SaBN": {"norm": "sandwich"}}
    whole = train_interleaved(variant_configs(base, tmp_path / "whole", variants))
    cut = variant_configs(dataclasses.replace(base, epochs=1), tmp_path / "cut", variants)
    train_interleaved(cut)
    with pytest.raises(ConfigError, match="epochs cannot change"):
        train_interleaved(variant_configs(base, tmp_path / "cut", variants), resume=True)  # they were for 1 epoch
    for config in cut.values():  # as if killed after epoch 1 of 2: the saved config is the 2-epoch one
        checkpoint = load_checkpoint(Path(config.out_dir) / "last.pt")
        checkpoint["config"]["epochs"] = 2
        save_checkpoint(checkpoint, Path(config.out_dir) / "last.pt")
    resumed = train_interleaved(variant_configs(base, tmp_path / "cut", variants), resume=True)
    for label in variants:
        assert resumed[label].step == whole[label].step
        a = load_checkpoint(tmp_path / "whole" / label / "last.pt")["model"]
        b = load_checkpoint(tmp_path / "cut" / label / "last.pt")["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    again = train_interleaved(variant_configs(base, tmp_path / "cut", variants), resume=True)  # finished: no training
    assert again["SaBN"].step == whole["SaBN"].step
    final = load_checkpoint(tmp_path / "cut" / "SaBN" / "last.pt")["model"]
    assert torch.equal(final["conv1.weight"], b["conv1.weight"])
