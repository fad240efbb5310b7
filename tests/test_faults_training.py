"""Fault injection while training: two processes racing for one run folder, a disk that fills up mid-run, a torn
metrics line. Every one ends in one line (exit 2) or is absorbed, and the run then resumes bit-for-bit."""
import os
import subprocess
import sys

import pytest
import torch
import yaml
from fake_data import write_fashion_mnist
from helpers import fill_disk

from robust_sabn.cli import main
from robust_sabn.io import load_checkpoint
from robust_sabn.training.config import TrainConfig
from robust_sabn.training.loop import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

FLAGS = ["--dataset", "fashion-mnist", "--arch", "resnet_small", "--width", "4", "--eps", "0.1", "--steps", "2",
         "--val-steps", "2", "--val-size", "32", "--epochs", "3", "--batch-size", "16", "--lr", "0.05",
         "--milestones", "2", "--warmup-steps", "3", "--device", "cpu", "--log-every", "2", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    write_fashion_mnist(root, n_train=112, n_test=16)
    return str(root)


def straight_run(data, out_dir, max_steps):
    """The same run as FLAGS, uninterrupted, in this process."""
    config = TrainConfig(dataset="fashion-mnist", data_dir=data, arch="resnet_small", width=4, eps=0.1, steps=2,
                         val_steps=2, val_size=32, epochs=3, batch_size=16, lr=0.05, milestones=[2], warmup_steps=3,
                         device="cpu", log_every=2, progress=False, max_steps=max_steps, out_dir=str(out_dir))
    train(config)
    return load_checkpoint(out_dir / "last.pt")


def assert_same_state(a, b):
    assert (a["step"], a["epoch"], a["batch"]) == (b["step"], b["epoch"], b["batch"])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])


def test_two_processes_started_together_on_one_folder_leave_one_run(data, tmp_path):
    """Seeds differ, so a folder mixed from both runs would show two seeds; exactly one process may succeed."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, "-m", "robust_sabn", "train", *FLAGS, "--data-dir", data,
                                   "--max-steps", "6", "--seed", str(seed), "--out-dir", str(run)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in processes]
    assert sorted(code for code, _, _ in results) == [0, 2], results
    winner = next(i for i, (code, _, _) in enumerate(results) if code == 0)
    loser_err = results[1 - winner][2]
    assert loser_err.count("\n") == 1 and loser_err.startswith("robust-sabn: error: ")
    holders = (f"pid {processes[winner].pid} on ", "a process that just started")  # the latter: not yet named
    assert (any(f"in use by another training run ({holder}" in loser_err for holder in holders)
            or "already holds a run; continue it with --resume" in loser_err)
    seeds = {yaml.safe_load((run / "config.yaml").read_text())["seed"],
             load_checkpoint(run / "last.pt")["config"]["seed"], load_checkpoint(run / "best.pt")["config"]["seed"]}
    assert seeds == {winner + 1}


def test_a_disk_that_fills_mid_run_keeps_last_pt_and_the_run_resumes_bit_for_bit(data, tmp_path, monkeypatch,
                                                                                   capsys):
    run = tmp_path / "run"
    writes = []

    def full_after_two_checkpoints(target):
        writes.append(target)
        return target == "last.pt" and writes.count("last.pt") > 2

    fill_disk(monkeypatch, fails=full_after_two_checkpoints)
    argv = ["train", *FLAGS, "--data-dir", data, "--max-steps", "12", "--save-every", "2", "--out-dir", str(run)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no space left to write {run / 'last.pt'}: it needs " in err
    monkeypatch.undo()
    assert load_checkpoint(run / "last.pt")["step"] == 4  # the previous checkpoint, intact (step 5 ends epoch 1)
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl"]
    (run / ".last.pt.interrupted.tmp").write_bytes(b"what a kill in the middle of a save leaves")

    assert main(["train", "--resume", str(run), "--max-steps", "12"]) == 0
    assert not list(run.glob("*.tmp"))
    assert_same_state(straight_run(data, tmp_path / "straight", 12), load_checkpoint(run / "last.pt"))


def test_resume_drops_a_torn_last_metrics_line(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *FLAGS, "--data-dir", data, "--max-steps", "6", "--out-dir", str(run)]) == 0
    whole = (run / "metrics.jsonl").read_text()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "epoch": 2, "st')  # as a crash in the middle of writing the line leaves it
    assert main(["train", "--resume", str(run), "--max-steps", "8"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert "\n".join(lines).startswith(whole.rstrip("\n")) and len(lines) > len(whole.splitlines())
    lines.insert(1, "not json")
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max-steps", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.jsonl line 2 is not a metrics record" in err


def test_a_disk_full_at_the_first_checkpoint_leaves_a_folder_that_resumes_bit_for_bit(data, tmp_path, monkeypatch,
                                                                                      capsys):
    """best.pt is written first: a disk that fills on the first last.pt leaves best.pt alone, which holds the same
    state; --resume continues from it, and a new run there is told to resume."""
    run = tmp_path / "run"
    fill_disk(monkeypatch, fails=lambda target: target == "last.pt")
    assert main(["train", *FLAGS, "--data-dir", data, "--max-steps", "12", "--out-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no space left to write {run / 'last.pt'}" in err
    monkeypatch.undo()
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.yaml", "metrics.jsonl"]
    assert main(["train", *FLAGS, "--data-dir", data, "--max-steps", "12", "--out-dir", str(run)]) == 2
    assert f"already holds a run; continue it with --resume {run}" in capsys.readouterr().err

    assert main(["train", "--resume", str(run)]) == 0
    assert f"resuming from {run / 'best.pt'}: the run stopped while it wrote its first last.pt" in (
        capsys.readouterr().out)
    assert_same_state(straight_run(data, tmp_path / "straight", 12), load_checkpoint(run / "last.pt"))


@pytest.mark.parametrize("limit, advice", [(["--max-steps", "6"], "raise --max-steps (now 6) to continue it"),
                                           (["--epochs", "1"], "its --epochs 1 fix its schedule, which a resumed "
                                                               "run keeps: start a new run for a longer one")])
def test_resuming_a_finished_run_says_nothing_to_do_and_still_drops_a_torn_metrics_line(data, tmp_path, capsys,
                                                                                         limit, advice):
    run = tmp_path / "run"
    assert main(["train", *FLAGS, "--data-dir", data, "--out-dir", str(run), *limit]) == 0  # the last --epochs wins
    whole = (run / "metrics.jsonl").read_text()
    last = load_checkpoint(run / "last.pt")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "epoch": 2, "st')  # as a crash in the middle of writing the line leaves it
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("training in NCHW")]
    assert said == [f"nothing to do: {run} already ran {last['step']} steps ({last['epoch']} of "
                    f"{last['config']['epochs']} epochs); {advice}"]
    assert (run / "metrics.jsonl").read_text() == whole
    assert_same_state(last, load_checkpoint(run / "last.pt"))
