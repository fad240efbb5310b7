"""Shareable weights: safetensors beside the .pt, SHA-256 manifests checked on load, the RobustBench model-zoo
entry, and exports laid out as Hugging Face model repositories (also in the Hugging Face cache layout), offline."""
import collections
import hashlib
import json
import os
import shutil

import pytest
import torch
import yaml
from helpers import write_run_dir
from safetensors.torch import load_file

from robust_sabn import create_model
from robust_sabn.cli import main
from robust_sabn.errors import CheckpointError
from robust_sabn.exporting import export
from robust_sabn.exporting.robustbench import build_exported
from robust_sabn.model_files import load_trained_model


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One export (with --eval and --hf-dir) for the tests of this module; each gets its own copy."""
    root = tmp_path_factory.mktemp("made")
    run = write_run_dir(root, eps=0.5)
    assert main(["export", str(run), "--name", "Shared2026", "--model-dir", str(root / "models"), "--eval",
                 "--n-examples", "4", "--hf-dir", str(root / "hf")]) == 0
    return root


@pytest.fixture
def exported(made, tmp_path):
    for name in ("models", "model_info", "eval", "hf", "run"):
        shutil.copytree(made / name, tmp_path / name, symlinks=True)
    (tmp_path / "data").symlink_to(made / "data")
    return tmp_path / "models" / "cifar10" / "Linf" / "Shared2026.pt"


def one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_export_writes_identical_safetensors_and_a_manifest_sha256sum_reads(exported):
    pt = torch.load(exported, weights_only=True)
    shared = load_file(exported.with_suffix(".safetensors"))
    assert pt.keys() == shared.keys() and all(torch.equal(pt[k], shared[k]) for k in pt)
    lines = exported.with_suffix(".sha256").read_text().splitlines()
    expected = {f"{hashlib.sha256((exported.parent / n).read_bytes()).hexdigest()}  {n}"
                for n in ("Shared2026.pt", "Shared2026.safetensors", "Shared2026.arch.json")}
    assert set(lines) == expected  # sha256sum -c format
    from_pt, from_shared = load_trained_model(exported), load_trained_model(exported.with_suffix(".safetensors"))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(from_pt.model(x), from_shared.model(x)) and from_shared.is_export


def test_a_changed_file_fails_the_manifest_check_of_every_loader(exported, capsys):
    data = bytearray(exported.read_bytes())
    data[-100] ^= 1
    exported.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its SHA-256 in .*Shared2026.sha256"):
        load_trained_model(exported)
    with pytest.raises(CheckpointError, match="changed or damaged"):  # RobustBench's load_model builds it first
        build_exported(exported.with_name("Shared2026.arch.json"))
    err = one_line_error(["eval", str(exported), "--attack", "pgd-2", "--n-examples", "2"], capsys)
    assert "Shared2026.pt does not match its SHA-256" in err


def test_export_prints_a_model_zoo_entry_that_builds_the_exported_model(exported, capsys):
    assert main(["export", str(exported.parents[3] / "run"), "--name", "Zoo2026", "--model-dir",
                 str(exported.parents[2])]) == 0
    out = capsys.readouterr().out
    entry = out.split("OrderedDict; the card Zoo2026.json goes to model_info/cifar10/Linf/):\n\n")[1].strip()
    assert entry.startswith("# from robust_sabn.models import create_model") and "'gdrive_id': ''" in entry
    namespace = {"create_model": create_model, "OrderedDict": collections.OrderedDict}
    exec(f"linf = OrderedDict([\n{entry}\n])", namespace)  # noqa: S102 -- the text a pull request pastes
    model = namespace["linf"]["Zoo2026"]["model"]()
    model.load_state_dict(torch.load(exported.with_name("Zoo2026.pt"), weights_only=True))  # strict


def test_the_card_has_robustbench_fields_and_the_hf_folder_a_model_card_with_intervals(exported):
    card = json.loads((exported.parents[3] / "model_info" / "cifar10" / "Linf" / "Shared2026.json").read_text())
    report = json.loads(next((exported.parents[3] / "eval").rglob("Shared2026-autoattack*.json")).read_text())
    assert {"link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue", "architecture",
            "eps", "clean_acc", "reported", "autoattack_acc", "footnote", "unreliable"} <= set(card)
    hf = exported.parents[3] / "hf"
    assert sorted(p.name for p in hf.iterdir()) == ["README.md", "config.json", "model.safetensors", "model.sha256"]
    assert (hf / "model.safetensors").read_bytes() == exported.with_suffix(".safetensors").read_bytes()
    config = json.loads((hf / "config.json").read_text())
    assert config["threat"]["label"] == "Linf 0.5" and config["spec"]["arch"] == "resnet_small"
    readme = (hf / "README.md").read_text()
    front = yaml.safe_load(readme.split("---")[1])
    metrics = front["model-index"][0]["results"][0]["metrics"]
    assert front["library_name"] == "robust-sabn" and metrics[1]["value"] == round(100 * report["robust_acc"], 2)
    low, high = report["clean_acc_ci"]
    assert f"{100 * report['clean_acc']:.2f} ({100 * low:.2f}-{100 * high:.2f})" in readme and "Linf" in readme


def hf_cache(hf, root):
    """``root/models--org--Shared2026``: the folder in the Hugging Face cache's layout (blobs, symlinked snapshot)."""
    repo = root / "models--org--Shared2026"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for file in hf.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.write_bytes(file.read_bytes())
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    return repo


def test_eval_and_export_load_a_hugging_face_folder_and_its_cache_copy(exported, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = ["--data-dir", str(tmp_path / "data")]
    repo = hf_cache(tmp_path / "hf", tmp_path / "cache")
    for folder, name in ((tmp_path / "hf", "hf"), (repo, "models--org--Shared2026")):
        assert main(["eval", str(folder), "--attack", "pgd-2", "--n-examples", "4", *data]) == 0
        report = json.loads(next((tmp_path / "eval" / name).glob("model-pgd-2-plain-Linf-0.5.json")).read_text())
        assert report["source"] == "Hugging Face model folder" and report["threat"]["label"] == "Linf 0.5"
    assert not (repo / "snapshots" / "0123abc" / "eval").exists()  # nothing written into the cache
    assert main(["export", str(repo), "--name", "FromHub2026", "--model-dir", str(tmp_path / "again")]) == 0
    again = load_file(tmp_path / "again" / "cifar10" / "Linf" / "FromHub2026.safetensors")
    original = load_file(exported.with_suffix(".safetensors"))
    assert all(torch.equal(again[k], original[k]) for k in original)
    (tmp_path / "hf" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text().replace("0.5", "0.25"))
    err = one_line_error(["eval", str(tmp_path / "hf"), "--attack", "pgd-2", "--n-examples", "4", *data], capsys)
    assert "config.json does not match its SHA-256" in err


def test_a_hugging_face_folder_is_not_overwritten_by_accident(tmp_path, capsys):
    model = create_model("resnet_small", width=4).eval()
    export(model, "Plain2026", model_dir=tmp_path / "models")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"x")
    run = write_run_dir(tmp_path / "r")
    err = one_line_error(["export", str(run), "--name", "Other2026", "--model-dir", str(tmp_path / "models"),
                          "--hf-dir", str(tmp_path / "hf")], capsys)
    assert "holds a model already; pass --overwrite" in err
    assert not (tmp_path / "models" / "cifar10" / "Linf" / "Other2026.pt").exists()  # refused before writing


def test_a_cache_folder_whose_ref_names_no_revision_is_one_line(tmp_path):
    from robust_sabn.errors import CheckpointError
    from robust_sabn.model_files import hf_snapshot

    repo = tmp_path / "models--org--Evil2026"
    (repo / "snapshots" / "0123abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("../../../../etc")
    with pytest.raises(CheckpointError, match="names no revision"):
        hf_snapshot(repo)
    (repo / "refs" / "main").write_text("0123abc\n")
    assert hf_snapshot(repo) == repo / "snapshots" / "0123abc"
