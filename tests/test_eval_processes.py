"""`robust-sabn eval` across processes: killed with SIGKILL and run again, and sharded by torchrun (gloo)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import torchrun, write_fitted_run_dir, write_run_dir

from robust_sabn.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic as the one-thread run in this process


def results(path: Path) -> dict:
    """A JSON report without what depends on how it was run (times, processes, earlier runs)."""
    report = json.loads(path.read_text())
    return {k: v for k, v in report.items() if k not in ("time", "environment")}


def report_list(path: Path) -> list:
    return [{k: v for k, v in r.items() if k not in ("time", "environment")} for r in json.loads(path.read_text())]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_fitted_run_dir(tmp_path_factory.mktemp("fitted"))


def command(run_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", str(run_dir), "--attack", "apgd-ce", "--eps", "5/255", "--n-examples", "12", "--batch-size",
            "2", "--seed", "7", "--device", "cpu", "--no-progress", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def uninterrupted(run_dir):
    out = run_dir.parent / "whole"
    assert main(command(run_dir, out)) == 0
    report = results(out.with_suffix(".json"))
    assert 0 < report["robust_acc"] < report["clean_acc"] == 1.0  # some points break, some do not
    return report


def test_killed_with_sigkill_in_the_middle_the_same_command_finishes_with_the_same_report(run_dir, uninterrupted,
                                                                                         tmp_path, capsys):
    out = tmp_path / "report"
    state = tmp_path / "report.state"
    argv = [sys.executable, "-m", "robust_sabn", *command(run_dir, out)]
    process = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not list(state.glob("batch-*.pt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    finished = sorted(p.name for p in state.glob("batch-*.pt"))
    assert 1 <= len(finished) < 6 and not out.with_suffix(".json").exists()  # killed while attacking

    assert main(command(run_dir, out, "--seed", "8")) == 2  # the state of another evaluation is refused
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and f"{state} holds the finished batches of another evaluation (seed 7 there, 8 here)" \
        in error and error.endswith(f"delete {state} to start this evaluation over"), error

    assert main(command(run_dir, out)) == 0  # the same command again
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["time"]["resumed_batches"] == len(finished)
    assert results(out.with_suffix(".json")) == uninterrupted
    assert not state.exists()  # removed once the report is written


def test_two_torchrun_processes_give_the_report_of_one(run_dir, uninterrupted, tmp_path):
    out = tmp_path / "sharded"
    done = torchrun(*command(run_dir, out))
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["environment"]["processes"] == 2 and "2 processes" in done.stdout
    assert results(out.with_suffix(".json")) == uninterrupted  # per-image flags, per-attack accuracies, flags
    assert not out.with_name("sharded.state").exists()

    sweep = ["--attack", "pgd-5", "--eps-sweep", "0,2/255,5/255"]
    assert main([*command(run_dir, tmp_path / "one-sweep"), *sweep]) == 0
    torchrun(*command(run_dir, tmp_path / "two-sweep"), *sweep)
    assert report_list(tmp_path / "two-sweep.json") == report_list(tmp_path / "one-sweep.json")


def test_a_recalibrated_front_over_two_torchrun_processes_equals_the_one_process_front(tmp_path):
    """The first process recalibrates each mixture and sends it to the other: both shards attack the same model."""
    run = write_run_dir(tmp_path, n_test=8, labelled=True)
    args = ["eval", str(run), "--route-mix", "0:1:0.5", "--recalibrate", "8", "--attack", "pgd-2", "--batch-size",
            "2", "--device", "cpu", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    torchrun(*args, "--out", str(tmp_path / "two"))
    one, two = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "two"))
    assert two["mixtures"][1]["report"]["environment"]["processes"] == 2
    assert [m["report"]["per_image"] for m in one["mixtures"]] == [m["report"]["per_image"] for m in two["mixtures"]]
    assert one["recalibration"] == two["recalibration"]
