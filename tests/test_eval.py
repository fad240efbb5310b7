"""robust_sabn.eval.evaluate: the real AutoAttack, both protocols, flags, reproducibility, bad input."""
import json
import platform
import random
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import images_labelled_by, plain_model, routed_model
from pyautoattack import AutoAttack as PyAutoAttack
from torch import nn

from robust_sabn import Threat, fold_route, use_route
from robust_sabn.attacks import PGD
from robust_sabn.errors import ConfigError, RouteError
from robust_sabn.eval import (
    EvalSettings,
    EvaluationReport,
    autoattack_backend,
    eps_sweep,
    evaluate,
    make_eval_attack,
    plot_sweep,
    to_markdown,
    write_report,
)
from robust_sabn.eval.batches import batch_seed
from robust_sabn.eval.sweep import error_bars
from robust_sabn.provenance import cpu_name
from robust_sabn.stats import wilson_interval

pytestmark = pytest.mark.usefixtures("one_thread")


def robust_acc_direct(model, x, y, attacks, seed=0, eps=8 / 255, restarts=1):
    """pyautoattack called directly, as its README shows."""
    adversary = PyAutoAttack(model, attacks=attacks, device="cpu", eps=eps, norm="Linf", seed=seed, version="custom")
    adversary.apgd.n_restarts = restarts
    _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=4)
    return (y_adv == y).float().mean().item()


@pytest.mark.slow
def test_autoattack_matches_pyautoattack_called_directly_on_the_folded_model():
    model = routed_model()
    x, y = images_labelled_by(model)
    attack = make_eval_attack("autoattack", "custom", ["apgd-ce", "apgd-dlr"], aa_restarts=2)
    report = evaluate(model, x, y, EvalSettings(Threat(), attack, seed=3, batch_size=4, progress=False), route="adv")
    folded = fold_route(model, "adv")
    assert report.clean_acc == 0.75
    assert report.robust_acc == robust_acc_direct(folded, x, y, ["apgd-ce", "apgd-dlr"], seed=3, restarts=2)
    assert report.robust_acc < report.clean_acc  # the attack does something on this model
    # the per-attack numbers read from AutoAttack's log agree with running the first attack alone
    assert report.per_attack["apgd-ce"] == robust_acc_direct(folded, x, y, ["apgd-ce"], seed=3, restarts=2)
    assert report.per_attack["apgd-dlr"] == report.robust_acc
    assert report.backend.startswith("pyautoattack") and report.seed == 3 and report.n == 8


@pytest.mark.slow
def test_standard_autoattack_matches_pyautoattack_directly():
    model = routed_model()
    x, y = images_labelled_by(model, n=4, wrong=1)
    report = evaluate(model, x, y, EvalSettings(Threat("Linf", 8 / 255), batch_size=4, progress=False), route="adv")
    adversary = PyAutoAttack(fold_route(model, "adv"), device="cpu", eps=8 / 255, norm="Linf", seed=0)
    _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=4)
    assert report.robust_acc == (y_adv == y).float().mean().item()
    assert list(report.per_attack) == ["apgd-ce", "apgd-t", "fab-t", "square"]


def test_two_protocols_use_the_right_routes():
    model = routed_model()
    x, y = images_labelled_by(model, route="adv")
    report = evaluate(model, x, y, EvalSettings(Threat("Linf", 8 / 255), "pgd-20", progress=False), route="adv")
    single, oracle = report.protocols["single route"], report.protocols["oracle routing"]
    with torch.no_grad(), use_route(model, "clean"):
        clean_route_acc = (model(x).argmax(1) == y).float().mean().item()
    assert report.protocol == "single route"
    assert single.clean_acc == report.clean_acc == 0.75  # adv route on clean images
    assert oracle.clean_acc == clean_route_acc != 0.75
    assert oracle.robust_acc == single.robust_acc == report.robust_acc
    assert (single.clean_route, oracle.clean_route, oracle.adv_route) == ("adv", "clean", "adv")
    plain = plain_model()
    x, y = images_labelled_by(plain, route=None)
    report = evaluate(plain, x, y, EvalSettings(Threat("Linf", 8 / 255), "pgd-20", progress=False))
    assert list(report.protocols) == ["single route"]


def test_pgd_attacks_only_correct_points_and_matches_pgd_on_them():
    model = plain_model()
    x, y = images_labelled_by(model, n=16, route=None, wrong=5)
    seen = []
    original_forward = nn.Sequential.forward

    def recording_forward(self, inputs):
        seen.append(len(inputs))
        return original_forward(self, inputs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nn.Sequential, "forward", recording_forward)
        report = evaluate(model, x, y, EvalSettings(Threat("Linf", 16 / 255), "pgd-5", seed=7, batch_size=4,
                                                    progress=False))
    # the shape probe; then per batch of 4 its clean pass, and 5 PGD steps and the final prediction on its correct
    # images only (the first 5 images are wrong: none of batch 0, one of batch 1)
    assert seen == [1, 4, 4, *[3] * 6, 4, *[4] * 6, 4, *[4] * 6]
    robust = 0
    for index, correct in ((1, slice(5, 8)), (2, slice(8, 12)), (3, slice(12, 16))):
        torch.manual_seed(batch_seed(7, index))  # each batch attacked with its own seed
        adv = PGD(fold_route(model, None), eps=16 / 255, alpha=4 / 255, steps=5)(x[correct], y[correct])
        with torch.no_grad():
            robust += (model(adv).argmax(1) == y[correct]).sum().item()
    assert report.clean_acc == 11 / 16 and report.robust_acc == robust / 16 < 11 / 16


@pytest.mark.parametrize("attack", ["pgd-20", "cw", pytest.param("apgd-ce", marks=pytest.mark.slow)])
def test_attacks_lower_accuracy_and_eps_zero_changes_nothing(attack):
    model = routed_model()
    x, y = images_labelled_by(model)
    report = evaluate(model, x, y, EvalSettings(Threat("Linf", 16 / 255), attack, progress=False), route="adv")
    assert report.robust_acc < report.clean_acc == 0.75
    unattacked = evaluate(model, x, y, EvalSettings(Threat("Linf", 0.0), attack, progress=False), route="adv")
    assert unattacked.robust_acc == 0.75


@pytest.mark.slow
def test_model_rng_and_modes_are_left_as_found_and_results_repeat():
    model = routed_model().train()
    x, y = images_labelled_by(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(6)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    settings = EvalSettings(Threat(), make_eval_attack("autoattack", "custom", ["apgd-ce"]), seed=7, progress=False)
    first = evaluate(model, x, y, settings, route="adv")
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(layer.route is None for layer in model.modules() if hasattr(layer, "route_index"))
    again = evaluate(model, x, y, settings, route="adv")
    assert again.robust_acc == first.robust_acc and again.per_attack == first.per_attack


class ZeroGradient(nn.Module):
    """Rounds its input: gradients are zero everywhere, the classic gradient-masking symptom."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x):
        return self.linear((x * 4).round().flatten(1))


@pytest.mark.slow
def test_gradient_masking_flags_reach_the_report_and_markdown(tmp_path):
    torch.manual_seed(0)
    model = ZeroGradient().eval()
    x = torch.rand(6, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    report = evaluate(model, x, y, EvalSettings(attack=make_eval_attack("autoattack", "custom", ["apgd-dlr"]),
                                                progress=False))
    assert any("zero gradient" in flag for flag in report.flags)
    json_path, md_path = write_report(report, tmp_path / "report")
    assert "zero gradient" in json_path.read_text() and "> **Warning:** there are" in md_path.read_text()


def test_report_and_markdown_carry_the_settings():
    model = routed_model()
    x, y = images_labelled_by(model)
    report = evaluate(model, x, y, EvalSettings(Threat("Linf", 8 / 255), "cw", seed=4, progress=False), route="adv")
    values = report.to_dict()
    assert values["threat"] == {"norm": "Linf", "eps": 8 / 255, "label": "Linf 8/255"}
    assert (values["attack"], values["options"], values["seed"], values["batch_size"], values["n"]) == (
        "cw-20", {"steps": 20, "loss": "cw"}, 4, 256, 8)
    assert (values["clean_acc"], values["robust_acc"]) == (report.clean_acc, report.robust_acc) and report.n == 8
    assert values["protocol"] == "single route" and values["route"] == "adv"
    assert EvaluationReport.from_dict(json.loads(json.dumps(values))) == report  # the JSON holds the whole report
    assert report.attack_description.startswith("PGD-20 on the CW margin")
    text = to_markdown(report)
    assert "single route" in text and "oracle routing" in text and "8/255" in text and "seed 4" in text


def test_every_accuracy_of_a_report_carries_its_wilson_interval():
    model = routed_model()
    x, y = images_labelled_by(model)
    report = evaluate(model, x, y, EvalSettings(Threat(), "pgd-5", progress=False), route="adv")
    values = json.loads(json.dumps(report.to_dict()))
    correct, robust = (report.per_image[k].count("1") for k in ("correct", "robust"))
    assert values["clean_acc_ci"] == list(wilson_interval(correct, 8))
    assert values["robust_acc_ci"] == list(wilson_interval(robust, 8))
    oracle = values["protocols"]["oracle routing"]
    assert oracle["clean_acc_ci"] == list(wilson_interval(report.per_image["correct_clean_route"].count("1"), 8))
    assert oracle["robust_acc_ci"] == values["robust_acc_ci"] and oracle["n"] == 8
    assert all(c["clean_acc_ci"] == list(wilson_interval(c["correct"], c["n"])) for c in values["per_class"] if c["n"])
    low, high = report.robust_acc_ci
    assert f"{100 * report.robust_acc:.2f} ({100 * low:.2f}-{100 * high:.2f})" in to_markdown(report)
    for protocol in values["protocols"].values():  # a report written before intervals and per-protocol counts
        del protocol["n"], protocol["clean_acc_ci"], protocol["robust_acc_ci"]
    del values["clean_acc_ci"], values["robust_acc_ci"], values["per_attack_ci"]
    assert EvaluationReport.from_dict(values) == report


def test_error_bars_span_each_interval_in_points():
    below, above = error_bars([0.5, 0.9], [(0.4, 0.7), (0.8, 1.0)])
    assert below == pytest.approx([10, 10]) and above == pytest.approx([20, 10])


def test_backend_prefers_a_real_upstream_autoattack(monkeypatch):
    assert autoattack_backend().name.startswith("pyautoattack")  # the adapter installed here is skipped
    upstream = types.ModuleType("autoattack")
    upstream.AutoAttack = type("AutoAttack", (), {})
    monkeypatch.setitem(sys.modules, "autoattack", upstream)
    backend = autoattack_backend()
    assert backend.AutoAttack is upstream.AutoAttack and "upstream" in backend.name


def test_eps_sweep_draws_a_png(tmp_path):
    model = routed_model()
    x, y = images_labelled_by(model)
    reports = eps_sweep(model, x, y, [8 / 255, 0.0], EvalSettings(Threat(), "pgd-10", progress=False), route="adv")
    assert [r.threat.eps for r in reports] == [0.0, 8 / 255] and reports[0].robust_acc == 0.75
    png = plot_sweep(reports, tmp_path / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="PGD or APGD-CE"):
        eps_sweep(model, x, y, [0.0], EvalSettings(Threat(), "autoattack"), route="adv")


@pytest.mark.parametrize("change, error, match", [
    (lambda x, y: (x * 2, y), ConfigError, r"\[0, 1\]"),
    (lambda x, y: (x - 0.5, y), ConfigError, r"\[0, 1\]"),
    (lambda x, y: (x, y + 10), ConfigError, "labels must be in"),
    (lambda x, y: (x, y.float()), ConfigError, "integer"),
    (lambda x, y: (x[:3], y), ConfigError, "labels"),
    (lambda x, y: (x[0], y), ConfigError, "N x C x H x W"),
])
def test_bad_images_and_labels_are_refused(change, error, match):
    model = routed_model()
    x, y = change(*images_labelled_by(model))
    with pytest.raises(error, match=match):
        evaluate(model, x, y, EvalSettings(Threat("Linf", 8 / 255), "pgd-20", progress=False), route="adv")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"eps": 8}, ConfigError, r"eps must be a number in \[0, 1\]"),
    ({"eps": -0.1}, ConfigError, r"eps must be a number in \[0, 1\]"),
    ({"eps": float("nan")}, ConfigError, "finite"),
    ({"route": "adversarial"}, RouteError, "unknown route"),
    ({"route": None}, RouteError, "pass the route to evaluate"),
    ({"attack": "fgsm"}, ConfigError, "unknown attack"),
    ({"attack": "autoattack", "version": "fast"}, ConfigError, "unknown AutoAttack version"),
    ({"attack": "autoattack", "version": "custom"}, ConfigError, "needs attacks"),
    ({"attack": "autoattack", "version": "custom", "aa_attacks": ["apgd-ce"], "aa_restarts": 0}, ConfigError,
     "restarts"),
    ({"norm": "L1"}, ConfigError, "threat model"),
    ({"batch_size": 0}, ConfigError, "batch_size"),
])
def test_bad_settings_are_refused(kwargs, error, match):
    model = routed_model()
    x, y = images_labelled_by(model)

    def call(eps=8 / 255, norm="Linf", attack="pgd-20", version="standard", aa_attacks=None, aa_restarts=None,
             batch_size=256, route="adv"):
        adversary = make_eval_attack(attack, version, aa_attacks, aa_restarts)
        settings = EvalSettings(Threat(norm, eps), adversary, batch_size=batch_size, progress=False)
        return evaluate(model, x, y, settings, route=route)

    with pytest.raises(error, match=match):
        call(**kwargs)


def test_a_route_on_a_plain_model_is_refused():
    model = plain_model()
    x, y = images_labelled_by(model, route=None)
    with pytest.raises(RouteError, match="no routed layers"):
        evaluate(model, x, y, EvalSettings(Threat("Linf", 8 / 255), "pgd-20", progress=False), route="adv")


def test_run_autoattack_runs_on_the_models_device_not_the_images(monkeypatch):
    """A CUDA model with CPU test images (the usual case) must be attacked on the model's device."""
    from robust_sabn.eval import autoattack as autoattack_runner

    seen = {}

    class Recorder:
        def __init__(self, model, **kwargs):
            seen["device"] = kwargs["device"]
            raise KeyboardInterrupt  # stop before attacking

    monkeypatch.setattr(autoattack_runner, "model_device", lambda model: torch.device("cuda", 0))
    monkeypatch.setattr(autoattack_runner, "autoattack_backend", lambda: autoattack_runner.Backend("fake", Recorder))
    with pytest.raises(KeyboardInterrupt):
        autoattack_runner.run_autoattack(routed_model(), torch.rand(2, 3, 32, 32), torch.zeros(2, dtype=torch.long),
                                         Threat())
    assert seen["device"] == torch.device("cuda", 0)


def test_faster_numerics_are_asked_for_by_name_and_named_in_the_report():
    from robust_sabn import create_model
    from robust_sabn.eval.numerics import NUMERICS

    model = routed_model()
    x, y = images_labelled_by(model)
    real_forward, seen = nn.Conv2d.forward, []

    def recording_forward(conv, inputs):  # how every convolution of the evaluated form runs
        seen.append((conv.kernel_size != (1, 1) and conv.weight.is_contiguous(memory_format=torch.channels_last),
                     torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16))
        return real_forward(conv, inputs)

    expected = {"exact": {(False, False)}, "channels-last": {(True, False)}, "bf16": {(False, True)}}
    for numerics, forms in expected.items():
        settings = EvalSettings(Threat("Linf", 8 / 255), "pgd-5", numerics=numerics, progress=False)
        seen.clear()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(nn.Conv2d, "forward", recording_forward)
            report = evaluate(model, x, y, settings, route="adv")
        assert forms <= set(seen) <= forms | {(False, False)}, numerics  # the form ran (after the shape probe)
        assert report.numerics == numerics and report.environment["numerics"] == NUMERICS[numerics]
        assert report.environment["cpu"] == cpu_name()  # a report's times name the CPU they ran on
        if numerics != "exact":
            assert f"({NUMERICS[numerics]})" in to_markdown(report)
    hazard = create_model("resnet_small", width=4).eval()  # strided 1x1 convolutions of 4 input channels
    with pytest.raises(ConfigError, match="oneDNN issue 6035"):
        evaluate(hazard, torch.rand(2, 3, 8, 8), torch.tensor([0, 1]),
                 EvalSettings(Threat("Linf", 0.1), "pgd-1", device="cpu", numerics="channels-last", progress=False))
    with pytest.raises(ConfigError, match="unknown numerics 'fp8'"):
        evaluate(model, x, y, EvalSettings(Threat("Linf", 8 / 255), "pgd-5", numerics="fp8"), route="adv")


ALLOCATION_LOOP = """
import resource, sys, torch
if sys.argv[1] == "evaluate":
    from helpers import images_labelled_by, routed_model
    from robust_sabn.eval import EvalSettings, evaluate
    model = routed_model()
    evaluate(model, *images_labelled_by(model), EvalSettings(attack="pgd-1", progress=False, device="cpu"), route="adv")
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(16 << 20).fill_(1.0)  # 64 MiB, allocated, written and freed
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="counts the page faults that glibc's malloc causes")
def test_an_evaluation_on_the_cpu_keeps_freed_memory_for_the_next_step(tmp_path):
    """After evaluate() on the CPU, freeing and re-allocating a large tensor costs no fresh pages (the arithmetic is
    untouched: test_autoattack_matches_pyautoattack_called_directly_on_the_folded_model runs with it)."""
    faults = {}
    for case in ("plain", "evaluate"):
        done = subprocess.run([sys.executable, "-c", ALLOCATION_LOOP, case], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True)
        faults[case] = int(done.stdout.split()[-1])
    pages = 10 * (64 << 20) // 4096
    assert faults["plain"] > pages / 2  # glibc's default: each 64 MiB block mapped afresh
    assert faults["evaluate"] < 3 * pages / 10  # the heap's first growth only (measured: two blocks' worth)


@pytest.mark.slow
def test_autoattack_progress_totals_are_the_passes_each_attack_takes():
    """The bar's total per attack (from which it estimates the time left) is what pyautoattack runs on a batch that
    no attack breaks: every iteration of APGD and FAB, every query of Square."""
    from robust_sabn.eval.autoattack import attack_passes

    model = plain_model()
    x, y = images_labelled_by(model, n=4, route=None)
    counts, phase = {}, ["checks"]

    class Log:
        def debug(self, message, *args, **kwargs):
            if message.startswith("running "):
                phase[0] = message.removeprefix("running ")
        info = warning = error = critical = debug

    model.register_forward_hook(lambda *_: counts.__setitem__(phase[0], counts.get(phase[0], 0) + 1))
    for version, attacks in (("standard", None), ("custom", ["apgd-ce", "apgd-dlr", "fab", "square"])):
        adversary = PyAutoAttack(model, attacks=attacks, device="cpu", eps=1e-7, norm="Linf", seed=0, version=version)
        adversary.apgd.n_iter = adversary.apgd_targeted.n_iter = adversary.fab.n_iter = 3
        adversary.square.n_queries = 7
        counts.clear()
        phase[0] = "checks"  # AutoAttack's own checks run before its first attack
        for owner in (adversary, adversary.apgd, adversary.apgd_targeted):
            owner.logger = Log()
        adversary.run_standard_evaluation(x, y, batch_size=4)
        expected = attack_passes(adversary)
        assert {attack: counts[attack] for attack in adversary.attacks_to_run} == {
            attack: expected[attack] for attack in adversary.attacks_to_run}, version
