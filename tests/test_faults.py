"""Fault injection without training: a full disk, unwritable paths, a locked or used run folder, resumes from wrong
files, overflowing numbers, malformed data files, mismatched exports and evaluation inputs. Each fault is one line
from the CLI (exit 2) or one UserError from the API, and leaves no partial file behind."""
import gzip
import json
import os
import pickle
import shlex
import stat
import subprocess

import numpy as np
import pytest
import torch
from fake_data import write_cifar10, write_fashion_mnist, write_svhn
from helpers import fill_disk, write_run_dir

from robust_sabn import Threat, create_model
from robust_sabn.cli import main
from robust_sabn.data import load_dataset
from robust_sabn.errors import ConfigError, DiskFullError, UserError
from robust_sabn.eval import EvalSettings, evaluate
from robust_sabn.exporting import ExportOptions
from robust_sabn.io import (
    all_or_nothing,
    atomic_write_text,
    check_writable,
    load_checkpoint,
    remove_temp_files,
    save_checkpoint,
)
from robust_sabn.model_files import load_trained_model
from robust_sabn.training.metrics import read_records
from robust_sabn.training.run_dir import RunDirLock, claim_run_dir

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = ["--dataset", "fashion-mnist", "--arch", "resnet_small", "--width", "4", "--eps", "0.1", "--steps", "1",
        "--val-steps", "1", "--val-size", "8", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
        "--no-progress"]


@pytest.fixture
def fmnist(tmp_path):
    write_fashion_mnist(tmp_path / "data", n_train=24, n_test=4)
    return ["--data-dir", str(tmp_path / "data")]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("robust-sabn: error: ") and err.count("\n") == 1, err
    return err


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


# ------------------------------------------------------------------------------------------------ a full disk
def test_a_full_disk_is_one_error_naming_the_file_and_the_space_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_checkpoint({"step": 1}, tmp_path / "last.pt")
    fill_disk(monkeypatch)
    payload = {"step": 2, "weights": torch.zeros(50_000)}
    with pytest.raises(DiskFullError, match=r"no space left to write .*last\.pt: it needs 19\d\.\d KB") as error:
        save_checkpoint(payload, path)
    monkeypatch.undo()
    needed = len(open(save_checkpoint(payload, tmp_path / "measure.pt"), "rb").read())
    assert error.value.needed == needed and error.value.path == path  # the exact size of the whole file
    assert str(pickle.loads(pickle.dumps(error.value))) == str(error.value)  # crosses process boundaries
    assert load_checkpoint(path) == {"step": 1}
    assert leftovers(tmp_path) == []


def test_a_full_disk_inside_a_group_writes_none_of_its_files(tmp_path, monkeypatch):
    atomic_write_text(tmp_path / "a.txt", "old a")
    fill_disk(monkeypatch, fails=lambda target: target == "c.txt")
    with pytest.raises(DiskFullError, match="c.txt"), all_or_nothing():
        atomic_write_text(tmp_path / "a.txt", "new a")
        atomic_write_text(tmp_path / "b.txt", "new b")
        atomic_write_text(tmp_path / "c.txt", "new c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old a"
    with all_or_nothing():
        atomic_write_text(tmp_path / "a.txt", "new a")
        assert (tmp_path / "a.txt").read_text() == "old a"  # renamed into place when the block ends
    assert (tmp_path / "a.txt").read_text() == "new a" and leftovers(tmp_path) == []


def test_an_evaluation_report_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from robust_sabn.eval.report import write_report

    report = evaluate(create_model("resnet_small", width=4).eval(), torch.rand(2, 3, 8, 8), torch.tensor([0, 1]),
                      EvalSettings(Threat("Linf", 0), "pgd-1", progress=False))
    fill_disk(monkeypatch, fails=lambda target: target.endswith(".md"))
    with pytest.raises(DiskFullError, match=r"report\.md"):
        write_report(report, tmp_path / "report")
    assert list(tmp_path.iterdir()) == []


def test_training_on_a_full_disk_is_one_line_exit_2_and_no_temporary_file(tmp_path, monkeypatch, fmnist, capsys):
    fill_disk(monkeypatch)
    assert main(["train", *TINY, *fmnist, "--out-dir", str(tmp_path / "run")]) == 2
    assert "no space left to write " + str(tmp_path / "run" / "config.yaml") in one_line_error(capsys)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
        (tmp_path / "old.txt").write_text("x")
        os.chmod(tmp_path / "old.txt", 0o600)
        atomic_write_text(tmp_path / "old.txt", "y")  # a replaced file too
    finally:
        os.umask(old)
    for name in ("new.txt", "old.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


def test_temporary_files_of_interrupted_saves_are_recognised(tmp_path):
    for name in (".last.pt.k2j3.tmp", ".metrics.jsonl.a.tmp", ".notes.txt.b.tmp", "last.pt"):
        (tmp_path / name).write_text("x")
    removed = remove_temp_files(tmp_path, ["last.pt", "metrics.jsonl"])
    assert sorted(p.name for p in removed) == [".last.pt.k2j3.tmp", ".metrics.jsonl.a.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.txt.b.tmp", "last.pt"]


# --------------------------------------------------------------------------------------------- output paths
def test_unwritable_output_paths_are_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    check_writable(tmp_path / "new" / "deeper" / "out.json")
    with pytest.raises(ConfigError, match=r"file is a file, not a folder"):
        check_writable(tmp_path / "file" / "sub" / "out.json")
    with pytest.raises(ConfigError, match="it is a folder"):
        check_writable(tmp_path)
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        with pytest.raises(ConfigError, match="not writable"):
            check_writable(tmp_path / "ro" / "out.json")


@pytest.mark.parametrize("flag", ["--model-dir", "--info-dir"])
def test_export_to_a_path_under_a_file_writes_nothing_and_a_retry_works(tmp_path, capsys, flag):
    run = write_run_dir(tmp_path)
    (tmp_path / "file").write_text("x")
    paths = {"--model-dir": tmp_path / "models", "--info-dir": tmp_path / "info", flag: tmp_path / "file"}
    argv = ["export", str(run), "--name", "Faulty2026"] + [a for k, v in paths.items() for a in (k, str(v))]
    assert main(argv) == 2
    assert "is a file, not a folder" in one_line_error(capsys)
    assert not (tmp_path / "models").exists() and not (tmp_path / "info").exists()
    paths[flag] = tmp_path / "good"
    assert main(["export", str(run), "--name", "Faulty2026"] + [a for k, v in paths.items() for a in (k, str(v))]) == 0


def test_an_export_that_fails_on_its_last_file_leaves_none(tmp_path, monkeypatch):
    from robust_sabn import export

    fill_disk(monkeypatch, fails=lambda target: target.endswith(".json") and "arch" not in target)  # the card
    with pytest.raises(DiskFullError):
        export(create_model("resnet_small", width=4), "Partial2026", model_dir=tmp_path / "models")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    monkeypatch.undo()
    weights = export(create_model("resnet_small", width=4), "Partial2026", model_dir=tmp_path / "models")
    assert weights.is_file() and (tmp_path / "model_info" / "cifar10" / "Linf" / "Partial2026.json").is_file()


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_export_killed_between_its_renames_leaves_no_loadable_model(tmp_path, monkeypatch, overwrite):
    """The weights are renamed into place last (and old ones removed first): an export stopped after some of its
    files has no weights file, so nothing loads a mixture of two exports, and the same export again works."""
    import robust_sabn.io as io
    from robust_sabn import export

    weights = tmp_path / "models" / "cifar10" / "Linf" / "Killed2026.pt"
    if overwrite:
        export(create_model("resnet_small", width=4), "Killed2026", model_dir=tmp_path / "models")
    renamed = []

    def killed_after_the_first(tmp, path):
        if renamed:
            raise KeyboardInterrupt  # as a kill at this point would stop it
        renamed.append(path)
        os.rename(tmp, path)

    monkeypatch.setattr(io.os, "replace", killed_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        export(create_model("resnet_small", width=8), "Killed2026", model_dir=tmp_path / "models",
               options=ExportOptions(overwrite=True))
    monkeypatch.undo()
    assert renamed == [weights.with_name("Killed2026.arch.json")] and not weights.exists()
    assert not [p for p in tmp_path.rglob("*.tmp*")]  # no temporary file left behind
    export(create_model("resnet_small", width=8), "Killed2026", model_dir=tmp_path / "models",
           options=ExportOptions(overwrite=overwrite))
    assert load_trained_model(weights).spec["kwargs"]["width"] == 8


def test_export_in_a_shared_folder_is_readable_by_the_group_also_after_overwrite(tmp_path):
    from robust_sabn import export

    old = os.umask(0o002)
    try:
        for overwrite in (False, True):
            weights = export(create_model("resnet_small", width=4), "Shared2026", model_dir=tmp_path / "models",
                             options=ExportOptions(overwrite=overwrite))
    finally:
        os.umask(old)
    files = [weights, weights.with_name("Shared2026.arch.json"),
             tmp_path / "model_info" / "cifar10" / "Linf" / "Shared2026.json"]
    assert [stat.S_IMODE(p.stat().st_mode) for p in files] == [0o664] * 3


def test_eval_out_under_a_file_fails_before_the_attack(tmp_path, capsys, monkeypatch):
    import importlib

    run = write_run_dir(tmp_path)
    (tmp_path / "file").write_text("x")

    def no_attack(*args, **kwargs):
        raise AssertionError("the attack ran")

    monkeypatch.setattr(importlib.import_module("robust_sabn.eval.evaluate"), "evaluate", no_attack)
    monkeypatch.setattr(importlib.import_module("robust_sabn.eval.sweep"), "eps_sweep", no_attack)
    for extra in ([], ["--eps-sweep", "0,8/255"]):
        assert main(["eval", str(run), "--attack", "pgd-2", "--n-examples", "2", "--out",
                     str(tmp_path / "file" / "report"), *extra]) == 2
        assert "is a file, not a folder" in one_line_error(capsys)


# ----------------------------------------------------------------------------------------- dataset mismatch
def test_export_under_another_dataset_is_refused_unless_allowed_and_the_card_names_the_real_one(tmp_path, capsys):
    run = write_run_dir(tmp_path)  # trained on cifar10
    models = tmp_path / "models"
    assert main(["export", str(run), "--name", "Mismatch2026", "--model-dir", str(models), "--dataset", "svhn"]) == 2
    assert "trained on cifar10 but would be filed as a svhn model" in one_line_error(capsys)
    assert not models.exists()
    assert main(["export", str(run), "--name", "Mismatch2026", "--model-dir", str(models), "--dataset", "svhn",
                 "--allow-dataset-mismatch"]) == 0
    card = json.loads((tmp_path / "model_info" / "svhn" / "Linf" / "Mismatch2026.json").read_text())
    arch = json.loads((models / "svhn" / "Linf" / "Mismatch2026.arch.json").read_text())
    assert card["dataset"] == arch["trained_on"] == "cifar10" and arch["dataset"] == "svhn"
    exported = models / "svhn" / "Linf" / "Mismatch2026.pt"  # re-exporting the export remembers the real dataset
    assert main(["export", str(exported), "--name", "Again2026", "--model-dir", str(models), "--dataset", "svhn"]) == 2
    assert "trained on cifar10" in one_line_error(capsys)
    assert main(["export", str(exported), "--name", "Again2026", "--model-dir", str(models)]) == 0
    assert (models / "cifar10" / "Linf" / "Again2026.pt").is_file()


# -------------------------------------------------------------------------------------------- the run folder
def test_a_locked_run_folder_is_one_line_naming_the_holder(tmp_path, fmnist, capsys):
    run = tmp_path / "run"
    run.mkdir()
    lock = RunDirLock(run)
    try:
        assert main(["train", *TINY, *fmnist, "--out-dir", str(run)]) == 2
    finally:
        lock.release()
    assert f"is in use by another training run (pid {os.getpid()} on " in one_line_error(capsys)
    assert list(run.iterdir()) == []  # released: the lock file is gone, and the folder is free again
    RunDirLock(run).release()


def test_a_lock_whose_file_was_replaced_while_locking_takes_the_new_file(tmp_path, monkeypatch):
    """The holder removes .lock on release; a process that opened the old file just before must not count it."""
    import fcntl

    import robust_sabn.training.run_dir as run_dir

    real_flock, calls = fcntl.flock, []

    def flock_then_release_elsewhere(fd, operation):
        real_flock(fd, operation)
        calls.append(fd)
        if len(calls) == 1:  # between our open and our lock, the old holder released: its file is gone
            (tmp_path / ".lock").unlink()
            (tmp_path / ".lock").write_text("pid 1 on elsewhere\n")

    monkeypatch.setattr(run_dir.fcntl, "flock", flock_then_release_elsewhere)
    lock = run_dir.RunDirLock(tmp_path)
    assert len(calls) == 2 and (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
    lock.release()


def test_a_folder_with_files_of_an_earlier_run_but_no_checkpoint_is_kept_and_named_with_the_command_that_clears_it(
        tmp_path, fmnist, capsys):
    run = tmp_path / "my run"
    run.mkdir()
    before = {name: f"earlier {name}".encode() for name in ("metrics.jsonl", "config.yaml")}
    for name, data in before.items():
        (run / name).write_bytes(data)
    (run / ".last.pt.x1y2.tmp").write_bytes(b"half")
    assert main(["train", *TINY, *fmnist, "--out-dir", str(run)]) == 2
    err = one_line_error(capsys)
    assert "holds files of an earlier run (config.yaml, metrics.jsonl) but no checkpoint to resume from" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name in before} == before
    assert main(["train", "--resume", str(run)]) == 2
    resume_err = one_line_error(capsys)
    assert "holds no last.pt (the run stopped before its first checkpoint)" in resume_err
    assert f"rm -r {shlex.quote(str(run))})" in resume_err
    subprocess.run(["sh", "-c", "rm " + err.split(": rm ", 1)[1]], check=True)  # the command the line names
    claim_run_dir(run, resume=False).release()  # a new run is accepted there now
    for name in ("last.pt", "best.pt"):  # either checkpoint makes the folder one to resume
        (run / name).write_bytes(b"x")
        assert main(["train", *TINY, *fmnist, "--out-dir", str(run)]) == 2
        assert f"already holds a run; continue it with --resume {shlex.quote(str(run))}" in one_line_error(capsys)
        (run / name).unlink()


def test_a_fresh_start_in_an_emptied_folder_removes_stale_temporary_files(tmp_path, monkeypatch, fmnist, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    fill_disk(monkeypatch, fails=lambda target: target == "config.yaml")  # stop right after the folder is claimed
    assert main(["train", *TINY, *fmnist, "--out-dir", str(run)]) == 2
    one_line_error(capsys)
    assert leftovers(run) == []


@pytest.mark.parametrize("content", ["state dict", "not a dict", "config not a mapping"])
def test_resume_from_a_file_that_is_not_a_training_checkpoint(tmp_path, capsys, content):
    model = create_model("resnet_small", width=4)
    payload = {"state dict": model.state_dict(), "not a dict": [1, 2],
               "config not a mapping": {**{k: 0 for k in ("model", "model_spec", "epoch", "batch", "step",
                                                          "optimizer", "scheduler", "scaler", "rng", "meters",
                                                          "best", "elapsed", "epoch_seconds")}, "config": 3}}[content]
    save_checkpoint(payload, tmp_path / "run" / "last.pt")
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    assert "is not a training checkpoint of robust-sabn" in one_line_error(capsys)


def test_metrics_log_drops_a_torn_last_line_and_names_a_bad_one_inside(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"kind": "step", "st')
    assert read_records(path) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n[3]\n{"step": 2}\n')
    with pytest.raises(UserError, match="metrics.jsonl line 2 is not a metrics record"):
        read_records(path)


# ---------------------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("flag, value, message", [
    ("--eps", "1e999", "eps must be a finite number"), ("--max-steps", "1e999", "max_steps must be a finite"),
    ("--steps", "1e400", "steps must be a finite"), ("--seed", "1e30", "seed must be an integer in [0, 4294967295]"),
    ("--lr", "nan", "lr must be a finite"), ("--eps", "1/0", "eps must be a number or a fraction"),
    ("--max-steps", "2.5", "max_steps must be an integer"), ("--seed", "-1", "seed must be an integer in [0, "),
    # numbers that parse but no run needs: each names its range and an example
    ("--steps", "1e20", "steps must be an integer in [1, 10000], got 100000000000000000000; e.g. --steps 7"),
    ("--val-steps", "1e20", "val_steps must be an integer in [1, 10000], got 100000000000000000000; e.g. --val-steps"),
    ("--lr", "1e20", "lr must be a number in (0, 10], got 1e+20; e.g. --lr 0.1"),
    ("--momentum", "1e20", "momentum must be a number in [0, 1), got 1e+20; e.g. --momentum 0.9"),
    ("--beta", "1e20", "beta must be a number in [0, 100], got 1e+20; e.g. --beta 6"),
    ("--awp-gamma", "1e20", "awp_gamma must be a number in [0, 1], got 1e+20; e.g. --awp-gamma 0.005"),
    ("--max-steps", "12345678901234567890", "max_steps must be an integer in [1, 1000000000], got 1234567890"),
    ("--width", "1000000", "width must be an integer in [1, 1024], got 1000000 (resnet_small at width 1024 holds"),
    ("--eps", "2", "eps must be a number in [0, 1], got 2 (inputs lie in [0, 1]); e.g. --eps 8/255"),
    ("--milestones", "1e9", "milestones must be an integer in [1, 100000], got 1000000000; e.g. --milestones 150"),
])
def test_numbers_that_overflow_or_are_not_numbers_are_one_line(tmp_path, capsys, flag, value, message):
    assert main(["train", *TINY, flag, value, "--out-dir", str(tmp_path / "run")]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_num_workers_is_bounded_by_the_cpu_cores_before_any_worker_starts(tmp_path, capsys, monkeypatch):
    """The probe forked 522 workers of 470 MB in 15 s, then left a folder a new run refused."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    for value in ("99999999999999999999", "9"):
        assert main(["train", *TINY, "--num-workers", value, "--out-dir", str(tmp_path / "run")]) == 2
        assert ("num_workers must be an integer in [0, 8] (4 x the CPU cores this process may use), got "
                f"{value} (each worker is a process") in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ malformed data files
def _corrupt_gzip(path):
    """A gzip header followed by a deflate stream that is not one (zlib.error when read)."""
    data = bytearray(gzip.compress(b"\x00" * 4096))
    data[10:30] = b"\xff" * 20
    path.write_bytes(bytes(data))


def _idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _cifar_label_12(root):
    import pickle

    path = root / "cifar-10-batches-py" / "test_batch"
    batch = pickle.loads(path.read_bytes(), encoding="latin1")
    batch["labels"][2] = 12
    path.write_bytes(pickle.dumps(batch, protocol=2))


def _svhn_label_11(root):
    import scipy.io

    mat = scipy.io.loadmat(str(root / "train_32x32.mat"))
    mat["y"][0, 0] = 11
    scipy.io.savemat(str(root / "train_32x32.mat"), {"X": mat["X"], "y": mat["y"]})


WRITERS = {"fashion-mnist": lambda root: write_fashion_mnist(root, n_train=24, n_test=4),
           "cifar10": lambda root: write_cifar10(root, n_train=10, n_test=4),
           "svhn": lambda root: write_svhn(root, n_train=10, n_test=4)}
MALFORMED = {
    "corrupt gzip": ("fashion-mnist", lambda root: _corrupt_gzip(root / "train-labels-idx1-ubyte.gz"),
                     "cannot read idx file .*train-labels-idx1-ubyte.gz"),
    "truncated idx": ("fashion-mnist", lambda root: (root / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(gzip.decompress((root / "t10k-images-idx3-ubyte.gz").read_bytes())[:-5])),
        "expected 3136 bytes"),
    "label 10 in fashion-mnist": ("fashion-mnist", lambda root: _idx(root / "train-labels-idx1-ubyte.gz",
                                                                     np.array([0, 10] + [1] * 22)),
                                  "training labels run from 0 to 10, but fashion-mnist has classes 0 to 9"),
    "32x32 fashion-mnist": ("fashion-mnist", lambda root: _idx(root / "train-images-idx3-ubyte.gz",
                                                               np.zeros((24, 32, 32))),
                            "training images are 1x32x32, not 1x28x28"),
    "label 12 in cifar10": ("cifar10", _cifar_label_12, r"test labels run from \d to 12, but cifar10 has classes 0"),
    "cifar10 garbage": ("cifar10", lambda root: (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(
        b"\x80\x02garbage"), "cannot read CIFAR batch"),
    "label 11 in svhn": ("svhn", _svhn_label_11, r"labels must be 1 to 10, found \d+ to 11"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_data_files_are_one_line_before_the_run_folder_exists(tmp_path, capsys, case):
    dataset, damage, message = MALFORMED[case]
    root = tmp_path / "data"
    WRITERS[dataset](root)
    damage(root)
    with pytest.raises(ConfigError, match=message):
        load_dataset(dataset, root, val_size=4)
    argv = ["train", *TINY, "--dataset", dataset, "--data-dir", str(root), "--out-dir", str(tmp_path / "run")]
    assert main(argv) == 2
    one_line_error(capsys)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ evaluation inputs
@pytest.fixture(scope="module")
def gray_model():
    return create_model("resnet_small", width=4, in_channels=1, num_classes=3).eval()


def test_evaluate_refuses_images_a_model_runs_only_by_accident(gray_model):
    y = torch.tensor([0, 1])
    rgb_model = create_model("resnet_small", width=4).eval()
    settings = EvalSettings(Threat("Linf", 0.1), "pgd-1", progress=False)
    with pytest.raises(ConfigError, match="takes images with 3 channels, not 1"):
        evaluate(rgb_model, torch.rand(2, 1, 32, 32), y, settings)
    with pytest.raises(ConfigError, match="takes images with 1 channels, not 3"):
        evaluate(gray_model, torch.rand(2, 3, 28, 28), y, settings)
    with pytest.raises(ConfigError, match="images of 1x1 pixels are too small for the model"):
        evaluate(gray_model, torch.rand(2, 1, 1, 1), y, settings)
    with pytest.raises(ConfigError, match="eps must be a number or a fraction like 8/255, got '8/255s'"):
        Threat("Linf", "8/255s")


def test_evaluate_takes_float64_images_and_eps_fractions_as_the_same_evaluation(gray_model):
    x, y = torch.rand(6, 1, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2])
    expected = evaluate(gray_model, x, y, EvalSettings(Threat("Linf", 8 / 255), "pgd-2", progress=False))
    same = evaluate(gray_model, x.double(), y, EvalSettings(Threat("Linf", "8/255"), "pgd-2", progress=False))
    for key in ("clean_acc", "robust_acc", "threat", "per_image"):
        assert getattr(same, key) == getattr(expected, key), key
