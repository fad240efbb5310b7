"""Export in RobustBench's format and loading through plain RobustBench code, offline."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision
from helpers import max_diff, randomize_bn_state

import robust_sabn
from robust_sabn import Threat, convert_norms, create_model, fold_route, use_route
from robust_sabn.errors import CheckpointError, ConfigError, RouteError
from robust_sabn.exporting import ExportOptions, card_path, fill_card
from robust_sabn.model_files import TrainedFor, load_trained_model
from robust_sabn.parsing import format_eps


def sabn_model():
    model = randomize_bn_state(create_model("resnet_small", width=4, norm="sandwich"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def rb_load(name, model_dir, dataset="cifar10", threat_model="Linf"):
    from robustbench.utils import load_model

    return load_model(model_name=name, model_dir=model_dir, dataset=dataset, threat_model=threat_model)


def test_zoo_sabn_model_loads_through_robustbench_with_identical_logits(tmp_path):
    model = sabn_model()
    path = robust_sabn.export(model, "RobustSabnZoo2026", route="adv", model_dir=tmp_path / "models")
    assert path == tmp_path / "models" / "cifar10" / "Linf" / "RobustSabnZoo2026.pt"
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    arch = json.loads(path.with_name("RobustSabnZoo2026.arch.json").read_text())
    assert arch["spec"]["kwargs"]["norm"] == "bn" and arch["spec"]["kwargs"]["conv"] == "standard"
    loaded = rb_load("RobustSabnZoo2026", tmp_path / "models")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad(), use_route(model, "adv"):
        assert max_diff(loaded(x), model(x)) <= 1e-5
    assert not loaded.training
    assert not any(isinstance(m, robust_sabn.SandwichBatchNorm2d) for m in loaded.modules())


def test_converted_torchvision_resnet18_loads_through_robustbench(tmp_path):
    model = randomize_bn_state(torchvision.models.resnet18(num_classes=10))
    model = convert_norms(model, "sandwich").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "route" in name:
                p.add_(0.2 * torch.randn_like(p))
    robust_sabn.export(model, "TorchvisionSabn2026", route="clean", model_dir=tmp_path / "models",
                       arch={"callable": "torchvision.models:resnet18", "kwargs": {"num_classes": 10}})
    with pytest.raises(CheckpointError, match="register_robustbench"):  # the file alone may not name code to run
        rb_load("TorchvisionSabn2026", tmp_path / "models")
    robust_sabn.register_robustbench(tmp_path / "models", arch="torchvision.models:resnet18")
    loaded = rb_load("TorchvisionSabn2026", tmp_path / "models")
    assert type(loaded) is torchvision.models.ResNet
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad(), use_route(model, "clean"):
        assert max_diff(loaded(x), model(x)) <= 1e-5


def test_card_has_robustbench_fields_and_takes_an_autoattack_report(tmp_path):
    model = create_model("resnet_small", width=4).eval()
    robust_sabn.export(model, "PlainCard2026", model_dir=tmp_path / "models", trained=TrainedFor(Threat()))
    path = card_path("PlainCard2026", tmp_path / "models")
    assert path == tmp_path / "model_info" / "cifar10" / "Linf" / "PlainCard2026.json"
    card = json.loads(path.read_text())
    assert {"link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
            "architecture", "eps", "clean_acc", "reported", "autoattack_acc"} <= set(card)
    assert card["eps"] == "8/255" and card["number_forward_passes"] == 1 and card["clean_acc"] is None
    assert card["versions"]["robust_sabn"] == robust_sabn.__version__ and card["versions"]["torch"]
    card["authors"] = "A. Person"
    path.write_text(json.dumps(card))
    report = SimpleNamespace(attack="autoattack", protocol="single route", version="standard", backend="pyautoattack",
                             n=100, seed=0, batch_size=100, threat=Threat(), clean_acc=0.8512, robust_acc=0.5,
                             flags=["masking"])
    fill_card(path, report)
    card = json.loads(path.read_text())
    assert (card["clean_acc"], card["autoattack_acc"], card["unreliable"]) == ("85.12", "50.00", True)
    robust_sabn.export(model, "PlainCard2026", model_dir=tmp_path / "models", options=ExportOptions(overwrite=True))
    card = json.loads(path.read_text())
    assert card["authors"] == "A. Person" and card["clean_acc"] is None  # kept what a person wrote; new weights
    with pytest.raises(ConfigError, match="single-route AutoAttack"):
        fill_card(path, SimpleNamespace(**{**vars(report), "attack": "pgd-20"}))


def test_names_robustbench_uses_or_treats_specially_are_refused(tmp_path):
    model = create_model("resnet_small", width=4).eval()
    for name, match in [("Rice2020Overfitting", "already a RobustBench model"), ("Standard", "already a RobustBench"),
                        ("bad name", "Name2026Title"), ("Kireev2021EffectivenessX", "specially")]:
        with pytest.raises(ConfigError, match=match):
            robust_sabn.export(model, name, model_dir=tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_export_checks_routes_architecture_and_existing_files(tmp_path):
    sabn, plain = sabn_model(), create_model("resnet_small", width=4).eval()
    with pytest.raises(RouteError, match="pass the route"):
        robust_sabn.export(sabn, "NoRoute2026", model_dir=tmp_path)
    with pytest.raises(RouteError, match="unknown route"):
        robust_sabn.export(sabn, "BadRoute2026", route="adversarial", model_dir=tmp_path)
    with pytest.raises(RouteError, match="no routed layers"):
        robust_sabn.export(plain, "PlainRoute2026", route="adv", model_dir=tmp_path)
    bare = torchvision.models.resnet18(num_classes=10).eval()
    with pytest.raises(ConfigError, match="no model_spec"):
        robust_sabn.export(bare, "NoSpec2026", model_dir=tmp_path)
    with pytest.raises(CheckpointError, match="does not match the architecture"):
        robust_sabn.export(bare, "WrongArch2026", model_dir=tmp_path, arch="torchvision.models:resnet18")
    robust_sabn.export(plain, "Twice2026", model_dir=tmp_path)
    with pytest.raises(ConfigError, match="overwrite"):
        robust_sabn.export(plain, "Twice2026", model_dir=tmp_path)
    assert sorted(p.name for p in (tmp_path / "cifar10" / "Linf").iterdir()) == [
        "Twice2026.arch.json", "Twice2026.pt", "Twice2026.safetensors", "Twice2026.sha256"]


def test_keys_robustbench_would_mangle_are_refused(tmp_path):
    model = create_model("resnet_small", width=4).eval()
    model.submodel = torch.nn.Linear(2, 2)  # key "submodel.weight" contains "model."
    with pytest.raises(ConfigError, match="'model.' or 'module.'"):
        robust_sabn.export(model, "Mangled2026", model_dir=tmp_path, arch=dict(model.model_spec))


def test_exported_files_rebuild_without_robustbench(tmp_path):
    model = sabn_model()
    path = robust_sabn.export(model, "Rebuild2026", route="adv", model_dir=tmp_path)
    loaded = load_trained_model(path)
    x = torch.rand(2, 3, 32, 32)
    assert loaded.source == "exported model"
    assert max_diff(loaded.model(x), fold_route(model, "adv")(x)) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("first_line", ["import robust_sabn", "pass"], ids=["robust_sabn imported", "never imported"])
def test_plain_robustbench_code_finds_exports_lazily_in_a_fresh_interpreter(tmp_path, first_line):
    """`import robust_sabn` does not import RobustBench; ./models, $ROBUST_SABN_MODEL_DIR and any model_dir passed
    to load_model are all found, also by a script that never imports robust_sabn (the import hooks do it)."""
    model = sabn_model()
    robust_sabn.export(model, "LazyDefault2026", route="adv", model_dir=tmp_path / "models")
    robust_sabn.export(model, "LazyEnv2026", route="adv", model_dir=tmp_path / "elsewhere")
    robust_sabn.export(model, "LazyArg2026", route="adv", model_dir=tmp_path / "third")
    torch.save(torch.rand(2, 3, 32, 32), tmp_path / "x.pt")
    with torch.no_grad(), use_route(model, "adv"):
        torch.save(model(torch.load(tmp_path / "x.pt")), tmp_path / "logits.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        {first_line}
        assert "robustbench" not in sys.modules
        from robustbench.model_zoo import model_dicts
        from robustbench.utils import load_model
        x, expected = torch.load("x.pt"), torch.load("logits.pt")
        for name, model_dir in [("LazyDefault2026", "./models"), ("LazyEnv2026", {str(tmp_path / "elsewhere")!r}),
                                ("LazyArg2026", {str(tmp_path / "third")!r})]:
            model = load_model(name, model_dir=model_dir, dataset="cifar10", threat_model="Linf")
            assert (model(x) - expected).abs().max() <= 1e-5 and not model.training
        print("ok")
    """)
    env = {**os.environ, "ROBUST_SABN_MODEL_DIR": os.pathsep.join(["models", str(tmp_path / "elsewhere")])}
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.slow
def test_robustbench_benchmark_runs_on_an_exported_model(tmp_path, monkeypatch):
    import robustbench.eval

    model = sabn_model()
    robust_sabn.export(model, "Bench2026", route="adv", model_dir=tmp_path / "models")
    loaded = rb_load("Bench2026", tmp_path / "models")
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = loaded(x).argmax(1)
    monkeypatch.setattr(robustbench.eval, "load_clean_dataset", lambda dataset, n, data_dir, prepr: (x[:n], y[:n]))
    monkeypatch.chdir(tmp_path)
    clean, robust = robustbench.eval.benchmark(loaded, n_examples=4, dataset="cifar10", threat_model="Linf",
                                               eps=0.5, batch_size=4, to_disk=True, model_name="Bench2026")
    assert clean == 1.0 and robust == 0.0  # eps 0.5 breaks everything; the standard AutoAttack really ran
    card = json.loads(Path("model_info/cifar10/Linf/Bench2026.json").read_text())
    assert card["clean_acc"] == "100.0" and card["autoattack_acc"] == "0.0"


@pytest.mark.parametrize("eps, norm, text", [(8 / 255, "Linf", "8/255"), (4 / 255, "Linf", "4/255"),
                                              (0.5, "L2", "0.5"), (0.1, "Linf", "0.1"), (0.2, "Linf", "0.2"),
                                              (51 / 255, "Linf", "0.2"), (12, "L1", "12"), (0.0314, "Linf", "0.0314")])
def test_format_eps(eps, norm, text):
    assert format_eps(eps, norm) == text
