"""`robust-sabn eval` and `robust-sabn export` end to end on a tiny run folder and fake CIFAR files."""
import json
import pickle
from pathlib import Path

import pytest
import torch
from fake_data import write_cifar100, write_imagefolder
from helpers import write_run_dir

from robust_sabn.cli import main


@pytest.fixture
def run_dir(tmp_path):
    return write_run_dir(tmp_path)


def test_eval_writes_json_and_markdown_reports(run_dir, capsys):
    assert main(["eval", str(run_dir), "--attack", "pgd-5", "--n-examples", "6", "--eps", "4/255", "--seed", "3"]) == 0
    stem = run_dir / "eval" / "last-pgd-5-adv-Linf-4_255"
    report = json.loads(stem.with_suffix(".json").read_text())
    assert (report["n"], report["threat"]["label"], report["seed"], report["route"]) == (6, "Linf 4/255", 3, "adv")
    assert report["trained_threat"]["label"] == "Linf 8/255"
    assert "trained at Linf 8/255 and is evaluated at Linf 4/255" in stem.with_suffix(".md").read_text()
    assert set(report["protocols"]) == {"single route", "oracle routing"} and report["dataset"] == "cifar10"
    assert "oracle routing" in stem.with_suffix(".md").read_text() and "single route" in capsys.readouterr().out


def test_eps_sweep_writes_a_png(run_dir, tmp_path):
    out = tmp_path / "sweep"
    assert main(["eval", str(run_dir), "--n-examples", "4", "--eps-sweep", "0,8/255", "--attack", "pgd-3",
                 "--out", str(out)]) == 0
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert [r["threat"]["label"] for r in json.loads(out.with_suffix(".json").read_text())] == ["Linf 0", "Linf 8/255"]


def test_export_then_eval_the_exported_file_and_a_state_dict_with_module_callable(tmp_path, capsys):
    """An export records the threat model it was trained for: its evaluation defaults to that radius (another one
    is allowed and said), and reports land beside the model folder RobustBench reads, never inside it."""
    run_dir = write_run_dir(tmp_path, eps=0.1)
    models = tmp_path / "models"
    assert main(["export", str(run_dir), "--name", "CliExport2026", "--model-dir", str(models)]) == 0
    exported = models / "cifar10" / "Linf" / "CliExport2026.pt"
    record = json.loads(exported.with_name("CliExport2026.arch.json").read_text())
    assert record["threat"] == {"norm": "Linf", "eps": 0.1, "label": "Linf 0.1"} and record["trained_on"] == "cifar10"
    for extra, label in (([], "Linf 0.1"), (["--eps", "8/255"], "Linf 8/255")):
        assert main(["eval", str(exported), "--attack", "pgd-2", "--n-examples", "4", *extra,
                     "--data-dir", str(tmp_path / "data")]) == 0
        reports = tmp_path / "eval" / "cifar10" / "Linf"
        report = json.loads((reports / f"CliExport2026-pgd-2-plain-{label.replace(' ', '-').replace('/', '_')}.json")
                            .read_text())
        assert report["threat"]["label"] == label and report["trained_threat"]["label"] == "Linf 0.1"
        assert report["source"] == "exported model" and list(report["protocols"]) == ["single route"]
    assert "Linf 8/255 (trained at Linf 0.1)" in capsys.readouterr().out
    assert sorted(p.name for p in models.rglob("*") if p.is_file()) == [
        "CliExport2026.arch.json", "CliExport2026.pt", "CliExport2026.safetensors", "CliExport2026.sha256"]
    spec = json.loads(exported.with_name("CliExport2026.arch.json").read_text())["spec"]
    raw = tmp_path / "weights.pt"
    raw.write_bytes(exported.read_bytes())
    assert main(["eval", str(raw), "--model", "robust_sabn.models:create_model", "--model-kwargs",
                 json.dumps({"name": spec["arch"], **spec["kwargs"]}), "--attack", "pgd-2", "--n-examples", "4",
                 "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["source"] == "state dict"


def test_images_of_another_shape_than_the_training_images_are_refused(run_dir, tmp_path, capsys):
    write_imagefolder(tmp_path / "folder", n_test=10, num_classes=10, size=16)  # 3x16x16: global pooling would run them
    smaller = ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "folder"), "--attack", "pgd-2"]
    refusal = "imagefolder test images are 3x16x16 (channels x height x width) but"
    bad(["eval", str(run_dir), *smaller], capsys, refusal)
    models = tmp_path / "models"
    assert main(["export", str(run_dir), "--name", "ShapeKept2026", "--model-dir", str(models)]) == 0
    exported = models / "cifar10" / "Linf" / "ShapeKept2026.pt"
    assert json.loads(exported.with_name("ShapeKept2026.arch.json").read_text())["input_shape"] == [3, 32, 32]
    bad(["eval", str(exported), *smaller], capsys, refusal)  # the export keeps the shape

    checkpoint = torch.load(run_dir / "last.pt", weights_only=True)
    torch.save({**checkpoint, "input_shape": [3, 32]}, run_dir / "last.pt")
    bad(["eval", str(run_dir), "--attack", "pgd-2"], capsys, "input_shape must be three positive integers")
    del checkpoint["input_shape"]  # written before the shape was recorded: nothing to check against
    torch.save(checkpoint, run_dir / "last.pt")
    assert main(["eval", str(run_dir), *smaller, "--n-examples", "2", "--out", str(tmp_path / "r")]) == 0


@pytest.mark.slow
def test_export_eval_fills_the_card_with_standard_autoattack(run_dir, tmp_path):
    models = tmp_path / "models"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # eps 0.5 breaks every point in APGD-CE's first pass, so the standard version ends quickly
        assert main(["export", str(run_dir), "--name", "CliCard2026", "--model-dir", str(models), "--eval",
                     "--n-examples", "4", "--eps", "0.5"]) == 0
    finally:
        torch.set_num_threads(threads)
    card = json.loads((tmp_path / "model_info" / "cifar10" / "Linf" / "CliCard2026.json").read_text())
    report = json.loads((tmp_path / "eval" / "cifar10" / "Linf" / "CliCard2026-autoattack-standard-plain-Linf-0.5.json")
                        .read_text())
    assert report["options"]["version"] == "standard" and report["per_attack"]["square"] == 0.0
    assert card["eps"] == "0.5" and card["autoattack_acc"] == "0.00" and card["unreliable"] is False
    assert card["clean_acc"] == f"{100 * report['clean_acc']:.2f}"


class Payload:
    """Unpickling this runs a shell command that leaves a marker file: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def bad(args, capsys, match):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robust-sabn: error:") and "\n" not in err and match in err, err


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": Payload(marker)}, f, protocol=2)
    bad(["eval", str(tmp_path / "evil.pt"), "--attack", "pgd-2"], capsys, "not a weights-only checkpoint")
    bad(["export", str(tmp_path / "evil.pt"), "--name", "Evil2026", "--model-dir", str(tmp_path)], capsys,
        "not a weights-only checkpoint")
    assert not marker.exists()


def test_bad_cli_input_is_one_line_and_exit_two(run_dir, tmp_path, capsys):
    common = ["--attack", "pgd-2", "--n-examples", "4"]
    bad(["eval", str(run_dir), "--eps", "8", *common], capsys, "eps must be a number in [0, 1], got 8")
    bad(["eval", str(run_dir), "--eps", "eight", *common], capsys, "fraction like 8/255")
    bad(["eval", str(run_dir), "--route", "adversarial", *common], capsys, "unknown route")
    bad(["eval", str(run_dir), "--attack", "fgsm"], capsys, "unknown attack")
    bad(["eval", str(tmp_path / "missing"), *common], capsys, "no checkpoint")
    bad(["eval", str(run_dir / "last.pt"), "--model", "resnet_small", "--model-kwargs", '{"width": 8}', *common],
        capsys, "does not match the architecture")
    bad(["eval", str(run_dir / "last.pt"), "--model", "resnet_small", "--model-kwargs", '{"bogus": 1}', *common],
        capsys, "resnet_small takes no argument 'bogus' (it takes: width, depth)")
    write_cifar100(tmp_path / "c100", n_train=10, n_test=4)
    bad(["eval", str(run_dir), "--dataset", "cifar100", "--data-dir", str(tmp_path / "c100"), *common], capsys,
        "labels must be in [0, 9]")
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "nospec.pt")
    bad(["eval", str(tmp_path / "nospec.pt"), *common], capsys, "no architecture")
    bad(["export", str(run_dir), "--name", "Rice2020Overfitting", "--model-dir", str(tmp_path / "m")], capsys,
        "already a RobustBench model")
    assert not Path(tmp_path / "m").exists()


def test_an_l1_export_is_filed_under_l1_and_says_robustbench_cannot_load_it(run_dir, tmp_path, capsys):
    models = tmp_path / "models"
    assert main(["export", str(run_dir), "--name", "CliL1", "--model-dir", str(models), "--threat-model", "L1",
                 "--eps", "12"]) == 0
    assert (models / "cifar10" / "L1" / "CliL1.pt").is_file()
    card = json.loads((tmp_path / "model_info" / "cifar10" / "L1" / "CliL1.json").read_text())
    assert card["eps"] == "12" and card["autoattack_acc"] is None
    out = capsys.readouterr().out
    assert "RobustBench 1.1.1 has no L1 threat model, so its load_model cannot reach this export" in out


@pytest.mark.slow
def test_an_l1_export_eval_fills_the_card_with_autoattacks_l1_version(run_dir, tmp_path):
    models = tmp_path / "models"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # a radius that APGD-CE's first pass breaks every point at, so the standard version ends quickly
        assert main(["export", str(run_dir), "--name", "CliL1Card", "--model-dir", str(models), "--threat-model",
                     "L1", "--eps", "200", "--eval", "--n-examples", "4", "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    card = json.loads((tmp_path / "model_info" / "cifar10" / "L1" / "CliL1Card.json").read_text())
    report = json.loads((tmp_path / "eval" / "cifar10" / "L1" / "CliL1Card-autoattack-standard-plain-L1-200.json")
                        .read_text())
    assert report["threat"]["label"] == "L1 200" and report["options"]["version"] == "standard"
    assert card["eps"] == "200" and card["autoattack_acc"] == f"{100 * report['robust_acc']:.2f}"
