"""The compiled forms (torch.compile): evaluation's ``--numerics compiled`` and training's ``--compile``. Compiling
is slow to warm up, so these tests are few and small, marked slow, and share one compile cache (``compile_cache``).
Their speed is measured by ``robust-sabn bench eval`` and ``bench train``, never here."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from fake_data import write_fashion_mnist
from helpers import images_labelled_by, interrupt_after, routed_model, torchrun, write_fitted_run_dir

from robust_sabn import SandwichBatchNorm2d, Threat, use_route
from robust_sabn.cli import main
from robust_sabn.compiling import cache_dir, compilations, compile_in_place
from robust_sabn.eval import EvalSettings, evaluate
from robust_sabn.eval.evaluate import freeze
from robust_sabn.eval.numerics import evaluation_form, warm_up
from robust_sabn.io import load_checkpoint
from robust_sabn.models import create_model
from robust_sabn.nn import split_routes
from robust_sabn.training.config import TrainConfig
from robust_sabn.training.loop import train
from robust_sabn.training.run_dir import resume_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread", "compile_cache", "fresh_dynamo")]
CPU = torch.device("cpu")


@pytest.fixture
def fresh_dynamo():
    """Forget the graphs earlier tests compiled in this process (dynamo would reuse one whose guards still pass,
    for a model of the same structure): each test compiles, from the shared disk cache."""
    torch._dynamo.reset()


def counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {**counters["inductor"], **counters["aot_autograd"]}


def test_the_compiled_form_agrees_with_the_exact_one():
    model = routed_model()
    x, y = images_labelled_by(model, n=32, wrong=4)
    with (evaluation_form(freeze(model, "adv", CPU), CPU) as exact,
          evaluation_form(freeze(model, "adv", CPU), CPU, "compiled") as compiled):
        assert warm_up(compiled, x) > 0 and warm_up(exact, x) == 0
        leaf = x.clone().requires_grad_(True)
        saved = []  # what the compiled forward keeps for its backward pass
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
            compiled_logits = compiled(leaf)
        logits = [exact(leaf), compiled_logits]
        grads = [torch.autograd.grad(F.cross_entropy(out, y), leaf)[0] for out in logits]
    assert torch.allclose(logits[0], logits[1], atol=1e-5) and torch.allclose(grads[0], grads[1], atol=1e-6)
    assert torch.float32 in saved and torch.bool not in saved  # ReLU masks recomputed, not stored (recompute_masks)
    top2 = logits[0].detach().topk(2).values
    away = top2[:, 0] - top2[:, 1] > 1e-3  # predictions that last-digit differences cannot change
    assert away.sum() >= 24
    reports = [evaluate(model, x, y, EvalSettings(Threat(), "pgd-5", seed=3, batch_size=8, numerics=numerics,
                                                  progress=False), route="adv") for numerics in ("exact", "compiled")]
    flags = [{key: torch.tensor([c == "1" for c in bits]) for key, bits in r.per_image.items()} for r in reports]
    for key in ("correct", "robust"):
        assert torch.equal(flags[0][key][away], flags[1][key][away])
    assert reports[1].robust_acc < reports[1].clean_acc  # the attack broke points: agreement means something
    assert reports[1].numerics == "compiled" and "torch.compile" in reports[1].environment["numerics"]
    assert reports[1].time["compile_s"] > 0 and reports[0].time["compile_s"] == 0


def test_autoattack_runs_in_the_compiled_form():
    model = routed_model()
    x, y = images_labelled_by(model, n=8)
    settings = [EvalSettings(Threat(), "autoattack", seed=1, batch_size=8, numerics=numerics, progress=False)
                for numerics in ("exact", "compiled")]
    exact, compiled = (evaluate(model, x, y, s, route="adv") for s in settings)
    assert compiled.per_attack.keys() == exact.per_attack.keys() and compiled.backend == exact.backend
    assert compiled.per_image == exact.per_image  # confident predictions: last digits change nothing here


def test_a_second_compilation_reads_the_compiled_code_from_the_cache():
    model = freeze(routed_model(), "adv", CPU)
    x = images_labelled_by(routed_model())[0]
    warm_up(compile_in_place(copy.deepcopy(model), CPU, print, frozen=True), x)  # fills the cache, if empty
    torch._dynamo.reset()  # forget what this process compiled: only the disk cache is left
    before = counts()
    warm_up(compile_in_place(copy.deepcopy(model), CPU, print, frozen=True), x)
    after = counts()
    new = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    assert new.get("fxgraph_cache_hit", 0) >= 3 and new.get("autograd_cache_hit", 0) == 2  # forward, backward
    assert new.get("fxgraph_cache_miss", 0) == 0 and new.get("autograd_cache_miss", 0) == 0
    assert any((cache_dir() / "inductor" / "fxgraph").iterdir())


def test_eval_compiled_names_its_form_and_warm_up_resumes_and_shards_without_compiling(tmp_path, monkeypatch):
    run_dir = write_fitted_run_dir(tmp_path)
    argv = ["eval", str(run_dir), "--attack", "apgd-ce", "--eps", "5/255", "--n-examples", "12", "--batch-size",
            "4", "--numerics", "compiled", "--device", "cpu", "--no-progress", "--out"]
    assert main([*argv, str(tmp_path / "whole")]) == 0
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        assert main([*argv, str(tmp_path / "resumed")]) != 0  # interrupted after one batch
    assert main([*argv, str(tmp_path / "resumed")]) == 0
    whole, resumed = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("whole", "resumed"))
    assert resumed["time"]["resumed_batches"] == 1 and resumed["per_image"] == whole["per_image"]
    assert 0 < whole["robust_acc"] < whole["clean_acc"]  # some points break, some do not
    assert whole["numerics"] == "compiled" and "torch.compile (inductor" in whole["environment"]["numerics"]
    assert whole["time"]["compile_s"] > 0 and "compile warm-up" in (tmp_path / "whole.md").read_text()
    compiled = sorted((cache_dir() / "inductor" / "fxgraph").rglob("*"))
    torchrun(*argv, str(tmp_path / "sharded"))
    assert json.loads((tmp_path / "sharded.json").read_text())["per_image"] == whole["per_image"]
    assert sorted((cache_dir() / "inductor" / "fxgraph").rglob("*")) == compiled  # both processes read the cache


@pytest.mark.parametrize("norm, conv", [("bn", "standard"), ("sandwich", "standard"), ("dual", "standard"),
                                        ("ubn", "standard"), ("gn", "weightalign"), ("none", "weightalign")])
def test_every_norm_traces_into_one_graph_in_every_mode_training_uses(norm, conv):
    model = create_model("resnet_small", width=4, norm=norm, conv=conv, in_channels=1)
    traced = torch.compile(model._call_impl, fullgraph=True, backend="eager")  # dynamo only: graph breaks raise
    x = torch.rand(4, 1, 28, 28)
    with split_routes(model, clean=2, adv=2):
        traced(x).sum().backward()
    with use_route(model.eval(), "adv"), torch.no_grad():
        traced(x)


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    write_fashion_mnist(root, n_train=96, n_test=8)
    return root


def tiny(data_dir, out_dir, **overrides) -> TrainConfig:
    """The model and batches of tests/test_training_ddp.py, whose compiled case then reads this module's graphs."""
    values = dict(dataset="fashion-mnist", data_dir=str(data_dir), arch="resnet_small", width=4, eps=0.1, steps=2,
                  val_steps=1, val_size=16, epochs=2, batch_size=8, max_steps=2, out_dir=str(out_dir), device="cpu",
                  progress=False, compile=True)
    return TrainConfig(**{**values, **overrides})


@pytest.mark.parametrize("objective, techniques", [
    ("hybrid", {"ema_decay": 0.9, "awp_gamma": 0.01}), ("madry", {}), ("fast", {}), ("trades", {}), ("mart", {}),
])
def test_train_compile_trains_every_objective_close_to_eager_and_resumes(fmnist, tmp_path, objective, techniques):
    compiled = train(tiny(fmnist, tmp_path / "compiled", objective=objective, **techniques))
    eager = train(tiny(fmnist, tmp_path / "eager", objective=objective, compile=False, **techniques))
    losses = [[r["train_loss"] for r in result.records] for result in (compiled, eager)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-3)  # not bit for bit, but the same training
    assert compiled.records[-1]["compile_time"] > 0 and "compile_time" not in eager.records[-1]
    resumed = train(resume_config(tmp_path / "compiled", max_steps=4), resume=True)
    assert resumed.step == 4 and load_checkpoint(tmp_path / "compiled" / "last.pt")["step"] == 4


def test_train_compile_falls_back_in_one_line_on_a_layer_that_cannot_be_compiled(fmnist, tmp_path, monkeypatch,
                                                                                   capsys):
    real = SandwichBatchNorm2d.forward_route

    def uncompilable(self, x, route):
        torch._dynamo.graph_break()  # what a layer dynamo cannot trace does
        return real(self, x, route)

    monkeypatch.setattr(SandwichBatchNorm2d, "forward_route", uncompilable)
    train(tiny(fmnist, tmp_path / "compiled", progress=True))
    lines = [line for line in capsys.readouterr().out.splitlines() if "--compile" in line]
    assert len(lines) == 1 and "cannot compile ResNet whole" in lines[0] and "trains eager" in lines[0]
    assert "in uncompilable" in lines[0]  # where the model code stopped the compilation
    train(tiny(fmnist, tmp_path / "eager", compile=False))
    fallen, eager = (load_checkpoint(tmp_path / name / "last.pt")["model"] for name in ("compiled", "eager"))
    assert all(torch.equal(fallen[key], eager[key]) for key in eager)  # eager from the first call on


def test_bench_train_trains_every_variant_also_compiled(fmnist, tmp_path, capsys):
    argv = ["bench", "train", "--variants", "SaAuxBN", "--compile", "--data-dir", str(fmnist), "--epochs", "1",
            "--train-size", "32", "--batch-size", "8", "--val-size", "16", "--width", "4", "--steps", "2",
            "--test-size", "8", "--pgd-steps", "1", "--aa-size", "0", "--device", "cpu", "--out-dir", str(tmp_path),
            "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ")[0] for line in out.splitlines() if line.startswith("| ")][1:]
    assert rows == ["| SaAuxBN", "| SaAuxBN compiled"]
    assert "Compiled / eager seconds per step (target <= 0.75; warm-up left out): SaAuxBN " in out


@pytest.mark.parametrize("flags, layouts", [([], ("channels_last", "NCHW")), (["--no-channels-last"], ("NCHW",))])
def test_bench_norms_compile_times_the_compiled_steps_against_both_eager_layouts(capsys, flags, layouts):
    argv = ["bench", "norms", "--width", "16", "--batch-size", "4", "--image-size", "8", "--repeats", "1",
            "--warmup", "1", "--compile", *flags]
    before = compilations()
    assert main(argv) == 0
    assert compilations() > before  # the compiled rows ran compiled code
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| BN compiled")]
    assert [row[0] for row in rows] == [f"BN compiled: {part} vs eager ({layout})"
                                        for part in ("adversarial step", "plain step", "attack pass")
                                        for layout in layouts]
    # the target of train --compile, against training's layout; one compiled time per step, against each baseline
    assert [row[3] for row in rows] == ["0.750"] + [""] * (3 * len(layouts) - 1)
    assert all(float(row[2]) > 0 for row in rows)
    assert len({row[1] for row in rows[:len(layouts)]}) == 1

