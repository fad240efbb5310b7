"""robust_sabn.eval.audit: models built to mask gradients are caught by the right check, ordinary ones pass; the
rules' thresholds; the command, its reports and the card."""
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import bad_cli, fill_disk, plain_model, routed_model, tiny_net, write_run_dir
from torch import nn

import robust_sabn
from robust_sabn import Threat, create_model, fold_route
from robust_sabn.cli import main
from robust_sabn.cli.quickstart import quickstart_config
from robust_sabn.data import test_images as first_test_images  # not a test
from robust_sabn.errors import ConfigError, DiskFullError
from robust_sabn.eval import EvalSettings
from robust_sabn.eval.audit import write_audit
from robust_sabn.eval.audit_checks import (
    AuditOptions,
    AuditRun,
    Reference,
    above,
    gradients,
    radius,
    radius_grid,
    routing,
    stronger,
    surrogate,
    transfer,
)
from robust_sabn.exporting import card_results
from robust_sabn.model_files import load_trained_model
from robust_sabn.training import train

pytestmark = pytest.mark.usefixtures("one_thread")
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class Quantized(nn.Module):
    """Rounds its input to a few gray levels first: the input gradient is zero almost everywhere."""

    def __init__(self, model: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * (self.levels - 1)) / (self.levels - 1))


class Noisy(nn.Module):
    """Adds fresh noise to its input at every forward: a randomized defense."""

    def __init__(self, model: nn.Module, sigma: float = 0.1) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x + self.sigma * torch.randn_like(x)).clamp(0, 1))


def labelled(model: nn.Module, n: int = 96, route: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random 8x8 images with the labels ``model`` gives them: every one classified correctly."""
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return x, fold_route(model, route)(x).argmax(1)


def audit_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, route: str | None = None,
              reference: Reference | None = None, eps: float = 8 / 255) -> AuditRun:
    """The checks' shared state, with PGD-3 as the standard evaluation (no AutoAttack: the checks that need none
    run in the fast tier)."""
    settings = EvalSettings(Threat("Linf", eps), "pgd-3", batch_size=64, progress=False).on(model)
    return AuditRun(model, x, y, settings, route, reference, AuditOptions())


# ------------------------------------------------------------------------------------------------ the rules
def test_a_paired_excess_counts_only_beyond_the_noise_of_the_disagreements():
    robust = "1" * 40
    twelve = stronger(robust, "0" * 12 + "1" * 28, 0.001)  # 12 broken only by the second: p = 2^-12
    assert (twelve["broken_only_by_second"], twelve["broken_only_by_first"]) == (12, 0) and twelve["significant"]
    assert not stronger(robust, "0" * 9 + "1" * 31, 0.001)["significant"]  # p = 2^-9 = 0.002
    mixed = stronger("0" * 10 + "1" * 30, "1" * 10 + "0" * 12 + "1" * 18, 0.001)  # 12 one way, 10 the other
    assert (mixed["broken_only_by_second"], mixed["broken_only_by_first"]) == (12, 10) and not mixed["significant"]
    assert not stronger("0" * 12 + "1" * 28, robust, 0.001)["significant"]  # the other direction is no excess


def test_a_share_counts_as_above_a_bound_when_its_one_sided_wilson_bound_is():
    assert not above(0, 500, 0.01, 0.001)["significant"] and not above(0, 0, 0.01, 0.001)["significant"]
    assert not above(10, 500, 0.01, 0.001)["significant"]  # 2%: within the noise of a 1% tolerance
    assert above(30, 500, 0.01, 0.001)["significant"]
    assert not above(60, 500, 0.1, 0.001)["significant"] and above(100, 500, 0.1, 0.001)["significant"]


def test_the_radius_grid_ends_where_every_image_is_within_reach():
    grid, reach, unbounded = radius_grid(Threat("Linf", "8/255"), 3 * 32 * 32)
    assert grid == [0.0, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 0.5, 1.0] and (reach, unbounded) == (0.5, 1.0)
    grid, reach, unbounded = radius_grid(Threat("L2", 0.5), 784)  # 28 x 28 gray images
    assert (reach, unbounded) == (14.0, 28.0) and grid == [0.0, 0.25, 0.5, 1.0, 2.0, 14.0, 28.0]
    assert radius_grid(Threat("Linf", 0.4), 10)[0] == [0.0, 0.2, 0.4, 0.5, 1.0]  # twice 0.4 is beyond 0.5


def test_audit_options_are_checked():
    for bad in ({"level": 0.7}, {"level": 0}, {"plus_images": 0}, {"plus_images": 2.5}):
        with pytest.raises(ConfigError):
            AuditOptions(**bad)


# ------------------------------------------------------------------------------------ checks without AutoAttack
def test_gradients_flag_a_rounded_input_and_a_random_model_and_pass_ordinary_ones():
    quantized = Quantized(plain_model())
    check = gradients(audit_run(quantized, *labelled(quantized)))
    assert not check.passed and check.numbers["clean"]["count"] == 96 and check.numbers["max_logit_change"] == 0
    noisy = Noisy(plain_model())
    check = gradients(audit_run(noisy, *labelled(plain_model())))
    assert not check.passed and check.numbers["clean"]["count"] == 0
    assert check.numbers["max_logit_change"] > check.numbers["logit_bound"] and "random" in check.explanation
    for ordinary in (plain_model(), tiny_net().eval()):  # trained, and as initialized
        check = gradients(audit_run(ordinary, *labelled(ordinary)))
        assert check.passed and check.numbers["clean"]["count"] == 0 and check.numbers["max_logit_change"] == 0
        assert check.numbers["attacked"]["images"] > 0  # PGD broke points, whose gradients were measured too


def test_radius_flags_an_attack_that_cannot_reach_what_every_radius_contains():
    quantized = Quantized(plain_model())
    check = radius(audit_run(quantized, *labelled(quantized)))
    assert not check.passed and check.numbers["missed_at_any"]["significant"], check.measured
    assert len(check.numbers["classes_given"]) > 1  # so every image can be turned into another class at Linf 1
    check = radius(audit_run(plain_model(), *labelled(plain_model())))
    assert check.passed and check.numbers["robust_acc"][-1] == 0.0 and check.numbers["radii"][-2:] == [0.5, 1.0]
    assert check.numbers["robust_acc"][0] == 1.0  # radius 0: the clean accuracy
    constant = tiny_net().eval()  # as initialized, one class for nearly every image: robust nearly everywhere
    check = radius(audit_run(constant, *labelled(constant)))
    assert check.passed and check.numbers["robust_acc"][-1] > 0.5 and len(check.numbers["classes_given"]) == 1


def test_routing_checks_that_the_model_audited_is_the_route_and_labels_the_oracle_not_deployable():
    model = routed_model()
    x, y = labelled(model, route="adv")
    check = routing(audit_run(model, x, y, route="adv", reference=Reference(model, "adv", "clean")))
    assert check.passed and check.numbers["max_logit_difference"] <= 1e-5
    assert set(check.numbers["protocols"]) == {"single route", "oracle routing (not deployable)"}
    wrong = fold_route(model, "clean")  # "an export of the adv route" that is the clean route
    check = routing(audit_run(wrong, x, y, reference=Reference(model, "adv", "clean")))
    assert not check.passed and "not the adv route" in check.explanation
    plain = routing(audit_run(plain_model(), *labelled(plain_model())))
    assert plain.passed and not plain.applicable


def test_transfer_crafts_on_the_clean_route_or_the_exact_model_and_else_is_not_applicable():
    check = transfer(audit_run(plain_model(), *labelled(plain_model())))
    assert check.passed and not check.applicable and "not applicable" in check.explanation
    model = routed_model()
    routed = audit_run(model, *labelled(model, route="adv"), route="adv", reference=Reference(model, "adv", "clean"))
    assert surrogate(routed)[0] == "the clean route"
    assert surrogate(replace(routed, reference=Reference(model, "clean", "clean"))) is None  # the clean route itself
    fast = replace(audit_run(plain_model(), *labelled(plain_model())), settings=EvalSettings(numerics="bf16"))
    assert surrogate(fast)[0] == "the exact float32 model"
    crafted = fast.once("transfer source", surrogate(fast)[1])
    assert crafted.numerics == "exact" and crafted.adversarials is not None


# --------------------------------------------------------------------------------------------- the whole audit
def audit_of(model, x, y, eps=8 / 255, **kwargs):
    settings = EvalSettings(Threat("Linf", eps), batch_size=len(x), progress=False)
    return robust_sabn.audit(model, x, y, settings, options=AuditOptions(plus_images=4), **kwargs)


@pytest.mark.slow
def test_an_input_rounded_to_four_levels_fails_gradients_and_white_box_vs_black_box():
    quantized = Quantized(plain_model())
    report = audit_of(quantized, *labelled(quantized, n=64))
    checks = {check.name: check for check in report.checks}
    assert not report.reliable and {"gradients", "white-box vs black-box", "radius"} <= set(report.failed)
    square = checks["white-box vs black-box"].numbers
    assert square["broken_only_by_second"] >= 10 and square["broken_only_by_first"] == 0
    assert any("zero gradient" in flag for flag in report.standard.flags)  # AutoAttack saw it too


@pytest.mark.slow
def test_fresh_noise_at_every_forward_fails_gradients():
    report = audit_of(Noisy(plain_model()), *labelled(plain_model(), n=32), eps=12 / 255)
    assert "gradients" in report.failed and not report.reliable


@pytest.mark.slow
@pytest.mark.parametrize("trained", [True, False])
def test_an_ordinary_model_trained_or_not_passes_every_check(trained):
    if trained:
        model, x, y = plain_model(), *labelled(plain_model(), n=32)
    else:  # a zoo model as initialized, on images it has never seen
        model = create_model("resnet_small", width=4, norm="bn").eval()
        x = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(5))
        y = model(x).argmax(1).detach()
    report = audit_of(model, x, y, eps=(4 if trained else 8) / 255)
    assert report.reliable, [(check.name, check.measured) for check in report.checks if not check.passed]
    assert [check.name for check in report.checks] == ["gradients", "white-box vs black-box", "radius",
                                                       "convergence", "transfer", "routing"]
    assert 0 < report.standard.robust_acc < 1  # robust to some images: the attacks had work to do


@pytest.mark.slow
def test_a_routed_model_is_audited_on_its_route_and_its_report_written_both_or_neither(tmp_path, monkeypatch):
    model = routed_model()
    report = audit_of(model, *labelled(model, n=32, route="adv"), eps=4 / 255, route="adv")
    checks = {check.name: check for check in report.checks}
    assert report.reliable, report.failed
    assert checks["transfer"].applicable and checks["transfer"].numbers["surrogate"] == "the clean route"
    assert checks["routing"].applicable and report.standard.route == "adv"
    assert "oracle routing" in report.standard.protocols
    paths = write_audit(report, tmp_path / "audit")
    assert json.loads(paths[0].read_text())["reliable"] is True and "**reliable**" in paths[1].read_text()
    fill_disk(monkeypatch, lambda name: name.endswith(".md"))
    with pytest.raises(DiskFullError):
        write_audit(report, tmp_path / "full")
    assert not list(tmp_path.glob("full*"))


@pytest.mark.slow
@pytest.mark.timeout(1800, method="thread")  # trains, then several AutoAttacks: 10 minutes on a busy 2-core CPU
@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_a_quickstart_like_model_passes_every_check(tmp_path):
    """The quickstart's recipe on real Fashion-MNIST, shortened to one epoch on 2000 images: the adv route."""
    config = quickstart_config(out_dir=str(tmp_path / "run"), epochs=1, train_size=2000, val_size=100,
                               progress=False, device="cpu")
    train(config)
    model = load_trained_model(tmp_path / "run").model
    x, y = first_test_images("fashion-mnist", None, 60)
    settings = EvalSettings(config.threat, batch_size=60, progress=False)
    report = robust_sabn.audit(model, x, y, settings, route="adv", options=AuditOptions(plus_images=6))
    assert report.reliable, [(check.name, check.measured) for check in report.checks if not check.passed]
    assert 0 < report.standard.robust_acc < report.standard.clean_acc


# ------------------------------------------------------------------------------------------- command and card
def test_bad_audit_input_is_one_line_and_exit_two(tmp_path, capsys):
    run_dir = write_run_dir(tmp_path)
    bad_cli(["audit", str(run_dir), "--plus-images", "0"], capsys, "--plus-images must be an integer in [1, 100000000]")
    bad_cli(["audit", str(run_dir), "--route", "adversarial"], capsys, "unknown route")
    bad_cli(["audit", str(tmp_path / "missing")], capsys, "no checkpoint")
    bad_cli(["audit", str(run_dir), "--eps", "2"], capsys, "eps must be a number in [0, 1], got 2")
    bad_cli(["export", str(run_dir), "--name", "NoEval2026", "--model-dir", str(tmp_path / "m"), "--audit"], capsys,
            "pass --eval too")
    assert not (tmp_path / "m").exists() and not (run_dir / "eval").exists()


@pytest.mark.slow
def test_the_audit_command_writes_its_verdict_as_json_and_markdown(tmp_path, capsys):
    run_dir = write_run_dir(tmp_path, n_test=8, labelled=True)  # eps 0.5: APGD-CE's first pass breaks every point
    assert main(["audit", str(run_dir), "--n-examples", "8", "--eps", "0.5", "--plus-images", "2",
                 "--batch-size", "8", "--no-progress"]) == 0
    stem = run_dir / "eval" / "last-audit-autoattack-standard-adv-Linf-0.5"
    report = json.loads(stem.with_name(stem.name + ".json").read_text())
    assert isinstance(report["reliable"], bool) and report["route"] == "adv" and report["n"] == 8
    assert [check["name"] for check in report["checks"]] == ["gradients", "white-box vs black-box", "radius",
                                                             "convergence", "transfer", "routing"]
    assert all(isinstance(check["passed"], bool) and check["rule"] for check in report["checks"])
    assert report["reliable"] == all(check["passed"] for check in report["checks"])
    assert report["standard"]["protocols"]["oracle routing"] and report["evaluations"]["square"]["images"] == 8
    markdown = stem.with_name(stem.name + ".md").read_text()
    assert "| check | measured | expected | passed |" in markdown and "not deployable" in markdown
    assert markdown in capsys.readouterr().out


def test_the_card_carries_the_audit_verdict():
    report = SimpleNamespace(attack="autoattack", protocol="single route", version="standard", backend="pyautoattack",
                             n=100, seed=0, batch_size=100, threat=Threat(), clean_acc=0.8, robust_acc=0.5, flags=[])
    passed = SimpleNamespace(standard=report, reliable=True, failed=[], level=0.001)
    card = card_results(report, passed)
    assert card["unreliable"] is False and "every check passed" in card["footnote"]
    failed = SimpleNamespace(standard=report, reliable=False, failed=["gradients", "radius"], level=0.001)
    card = card_results(report, failed)
    assert card["unreliable"] is True and "failed the gradients, radius checks" in card["footnote"]
    assert card_results(report)["unreliable"] is False  # no audit: AutoAttack's flags alone
    other = SimpleNamespace(standard=SimpleNamespace(threat=Threat(), n=50, seed=0), reliable=True, failed=[])
    with pytest.raises(ConfigError, match="another evaluation"):
        card_results(report, other)


@pytest.mark.slow
def test_export_eval_audit_fills_the_card_from_the_audited_evaluation(tmp_path):
    run_dir = write_run_dir(tmp_path, n_test=4, labelled=True)
    assert main(["export", str(run_dir), "--name", "Audited2026", "--model-dir", str(tmp_path / "models"), "--eval",
                 "--audit", "--n-examples", "4", "--eps", "0.5", "--batch-size", "4", "--plus-images", "2",
                 "--no-progress"]) == 0
    card = json.loads((tmp_path / "model_info" / "cifar10" / "Linf" / "Audited2026.json").read_text())
    reports = tmp_path / "eval" / "cifar10" / "Linf"
    audit = json.loads((reports / "Audited2026-audit-autoattack-standard-plain-Linf-0.5.json").read_text())
    evaluation = json.loads((reports / "Audited2026-autoattack-standard-plain-Linf-0.5.json").read_text())
    assert audit["standard"]["per_image"] == evaluation["per_image"]  # one evaluation, recorded in both
    assert card["autoattack_acc"] == f"{100 * evaluation['robust_acc']:.2f}"
    assert card["unreliable"] == (not audit["reliable"] or bool(evaluation["flags"]))
    checks = {check["name"]: check for check in audit["checks"]}
    assert checks["routing"]["applicable"] and checks["routing"]["passed"]  # the export is the adv route
    assert checks["transfer"]["numbers"]["surrogate"] == "the clean route"
