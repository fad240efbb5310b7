"""Resumable evaluations: the state folder, interrupted runs, refused foreign or damaged state; per-class and
per-image results, adversarial points, progress bars, L1."""
from dataclasses import replace

import pytest
import torch
from helpers import images_labelled_by, interrupt_after, plain_model, routed_model

from robust_sabn import Threat
from robust_sabn.errors import ConfigError
from robust_sabn.eval import EvalSettings, eps_sweep, evaluate, write_report
from robust_sabn.eval.autoattack import perturbation_size
from robust_sabn.eval.state import MANIFEST
from robust_sabn.io import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = EvalSettings(Threat(), "pgd-5", seed=3, batch_size=2, progress=False)


def results(report) -> dict:
    """Everything a report says about the model; not how long it took, where, or what an earlier run did."""
    values = report.to_dict()
    return {k: v for k, v in values.items() if k not in ("time", "environment")}


def test_an_interrupted_evaluation_resumes_to_the_same_report(tmp_path, monkeypatch):
    model = routed_model()
    x, y = images_labelled_by(model)
    whole = evaluate(model, x, y, SETTINGS, route="adv")
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            evaluate(model, x, y, SETTINGS, route="adv", state_dir=tmp_path / "state")
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["batch-000000.pt", "batch-000001.pt",
                                                                      MANIFEST]
    resumed = evaluate(model, x, y, SETTINGS, route="adv", state_dir=tmp_path / "state")
    assert resumed.time["resumed_batches"] == 2 and whole.time["resumed_batches"] == 0
    assert results(resumed) == results(whole)
    assert resumed.robust_acc < resumed.clean_acc  # the attack broke points, so equality means something
    again = evaluate(model, x, y, SETTINGS, route="adv", state_dir=tmp_path / "state")  # the folder is kept
    assert again.time["resumed_batches"] == 4 and results(again) == results(whole)


@pytest.mark.parametrize("change, message", [
    (dict(threat=Threat("Linf", 4 / 255)), "eps 0.03137254901960784 there, 0.01568627450980392 here"),
    (dict(attack="pgd-6"), "steps 5 there, 6 here"),
    (dict(seed=4), "seed 3 there, 4 here"),
    (dict(batch_size=4), "batch_size 2 there, 4 here"),
    (dict(route="clean"), "route 'adv' there, 'clean' here"),
    (dict(keep_adversarials=True), "adversarials False there, True here"),
    (dict(model=plain_model(), route=None), "another model"),
    (dict(x=torch.flip(images_labelled_by(routed_model())[0], [0])), "other images or labels"),
])
def test_the_state_of_another_evaluation_is_refused(tmp_path, change, message):
    model = routed_model()
    x, y = images_labelled_by(model)
    evaluate(model, x, y, SETTINGS, route="adv", state_dir=tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    call = {"model": model, "x": x, "y": y, "route": "adv", "state_dir": tmp_path}
    settings = replace(SETTINGS, **{k: v for k, v in change.items() if k not in call})
    with pytest.raises(ConfigError) as caught:
        evaluate(**{**call, **{k: v for k, v in change.items() if k in call}}, settings=settings)
    error = str(caught.value)
    assert "\n" not in error and message in error, error
    assert error.startswith(f"{tmp_path} holds the finished batches of another evaluation")
    assert error.endswith(f"delete {tmp_path} to start this evaluation over")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing was mixed in or overwritten


def tamper_flags(path):
    values = load_checkpoint(path)
    values["robust"] = values["correct"].clone()  # claim every correct point survived
    torch.save(values, path)


def tamper_checksum_too(path):
    from robust_sabn.eval.state import digest

    values = load_checkpoint(path)
    values.pop("checksum")
    values["index"] = 0  # batch 1's result presented as batch 0's, with a checksum that matches
    torch.save({**values, "checksum": digest(values)}, path)


@pytest.mark.parametrize("damage, message", [
    (tamper_flags, "does not match its checksum (it was modified or damaged)"),
    (tamper_checksum_too, "does not hold batch 1 of this evaluation"),
    (lambda path: path.write_bytes(path.read_bytes()[:100]),
     "cannot be read (it is truncated, damaged or not a batch file)"),
    (lambda path: path.rename(path.with_name("batch-000009.pt")), "does not hold batch 9 of this evaluation"),
    (lambda path: path.with_name("batch-1.pt").write_bytes(b""), "is not a batch file of robust-sabn"),
    (lambda path: path.with_name(MANIFEST).write_text("{"), "cannot read"),
])
def test_a_damaged_or_tampered_state_file_is_refused(tmp_path, damage, message):
    model = routed_model()
    x, y = images_labelled_by(model)
    evaluate(model, x, y, SETTINGS, route="adv", state_dir=tmp_path)
    damage(tmp_path / "batch-000001.pt")
    with pytest.raises(ConfigError) as caught:
        evaluate(model, x, y, SETTINGS, route="adv", state_dir=tmp_path)
    error = str(caught.value)
    assert "\n" not in error and message in error and error.endswith("to start this evaluation over"), error


def test_a_sweep_keeps_one_state_folder_per_radius_and_resumes(tmp_path, monkeypatch):
    model = routed_model()
    x, y = images_labelled_by(model)
    radii = [0.0, 4 / 255, 8 / 255]
    whole = eps_sweep(model, x, y, radii, SETTINGS, route="adv")
    with monkeypatch.context() as patch:
        interrupt_after(patch, 6)  # the first radius and half of the second
        with pytest.raises(KeyboardInterrupt):
            eps_sweep(model, x, y, radii, SETTINGS, route="adv", state_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eps-0", "eps-4_255"]
    resumed = eps_sweep(model, x, y, radii, SETTINGS, route="adv", state_dir=tmp_path)
    assert [r.time["resumed_batches"] for r in resumed] == [4, 2, 0]
    assert [results(r) for r in resumed] == [results(r) for r in whole]


def test_per_class_and_per_image_results_add_up_to_the_totals():
    model = routed_model()
    x, y = images_labelled_by(model, n=16, wrong=5)
    report = evaluate(model, x, y, SETTINGS, route="adv")
    rows = report.per_class
    assert [row["class"] for row in rows] == list(range(10))
    assert [row["n"] for row in rows] == torch.bincount(y, minlength=10).tolist()
    assert sum(row["correct"] for row in rows) == round(report.clean_acc * 16) == 11
    assert sum(row["robust"] for row in rows) == round(report.robust_acc * 16) < 11
    for row in rows:
        assert row["clean_acc"] == (row["correct"] / row["n"] if row["n"] else None)
        assert row["robust_acc"] == (row["robust"] / row["n"] if row["n"] else None)
    correct, robust = report.per_image["correct"], report.per_image["robust"]
    assert len(correct) == len(robust) == 16 and correct.count("1") == 11
    assert robust.count("1") == sum(row["robust"] for row in rows)
    assert all(c == "1" for c, r in zip(correct, robust) if r == "1")
    for row in rows:  # each image counted in its own class
        mine = [i for i in range(16) if y[i] == row["class"]]
        assert sum(correct[i] == "1" for i in mine) == row["correct"]


@pytest.mark.parametrize("attack", ["pgd-5", pytest.param("apgd-ce", marks=pytest.mark.slow)])
def test_saved_adversarials_are_the_points_that_broke(tmp_path, attack):
    model = routed_model()
    x, y = images_labelled_by(model, n=16, wrong=5)
    eps = 8 / 255
    report = evaluate(model, x, y, replace(SETTINGS, attack=attack, keep_adversarials=True), route="adv")
    paths = write_report(report, tmp_path / "report")
    assert [p.name for p in paths] == ["report.json", "report.md", "report.adversarials.pt"]
    saved = torch.load(paths[2], weights_only=True)
    broke = [i for i, (c, r) in enumerate(zip(report.per_image["correct"], report.per_image["robust"]))
             if c == "1" and r == "0"]
    assert saved["indices"].tolist() == broke and len(broke) > 0
    assert torch.equal(saved["labels"], y[broke])
    assert (perturbation_size(saved["images"] - x[broke], "Linf") <= eps + 1e-6).all()
    from robust_sabn import fold_route

    with torch.no_grad():
        predicted = fold_route(model, "adv")(saved["images"]).argmax(1)
    assert torch.equal(predicted, saved["predictions"]) and (predicted != saved["labels"]).all()
    assert "adversarials" not in report.to_dict()


class RecordingBar:
    """Stands in for tqdm in robust_sabn.eval.progress: records each bar's description, total and count."""

    bars: list = []

    def __init__(self, total=None, desc="", **_):
        self.total, self.desc, self.n, self.texts = total, desc, 0, []
        RecordingBar.bars.append(self)

    def update(self, count):
        self.n += count

    def reset(self, total=None):
        self.total, self.n = total, 0

    def set_description(self, text, refresh=True):
        self.texts.append(text)

    def set_postfix(self, values, refresh=True):
        self.texts.append(str(values))

    def close(self):
        pass


@pytest.mark.parametrize("attack, total", [("pgd-5", 6), pytest.param("apgd-ce", 103, marks=pytest.mark.slow)])
def test_progress_bars_count_forward_passes_within_a_batch_and_change_nothing(monkeypatch, attack, total):
    import robust_sabn.eval.progress as progress

    model = routed_model()
    x, y = images_labelled_by(model)
    quiet = evaluate(model, x, y, replace(SETTINGS, attack=attack), route="adv")
    monkeypatch.setattr(progress, "tqdm", RecordingBar)
    RecordingBar.bars = []
    shown = evaluate(model, x, y, replace(SETTINGS, attack=attack, progress=True), route="adv")
    assert results(shown) == results(quiet)
    bars = RecordingBar.bars
    assert [bar.desc for bar in bars] == [f"{attack} batch {i}/4" for i in (1, 2, 3, 4)]
    assert all(bar.total == total for bar in bars)
    if total is not None:  # PGD: its 5 steps and the prediction on the result (batch 1: both images wrong)
        assert [bar.n for bar in bars] == [0, total, total, total]
    else:  # APGD-CE's 102 passes of 100 iterations and the prediction after it; the bar names the attack running
        assert [bar.n for bar in bars[1:]] == [total] * 3 and f"{attack} batch 2/4: apgd-ce" in bars[1].texts


def test_l1_runs_in_autoattack_only_with_a_clear_error_elsewhere():
    model = routed_model()
    x, y = images_labelled_by(model)
    for attack in ("pgd-5", "cw"):
        with pytest.raises(ConfigError, match="not L1; for L1 use autoattack or apgd-ce"):
            evaluate(model, x, y, EvalSettings(Threat("L1", 2.0), attack, progress=False), route="adv")
    with pytest.raises(ConfigError, match="not L1; for L1 use autoattack or apgd-ce"):
        eps_sweep(model, x, y, [1.0, 2.0], EvalSettings(Threat("L1"), "pgd-20", progress=False), route="adv")


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["apgd-ce", "autoattack"])
def test_l1_autoattack_end_to_end(tmp_path, attack):
    from pyautoattack import AutoAttack as PyAutoAttack

    from robust_sabn import fold_route

    model = routed_model()
    x, y = images_labelled_by(model)
    settings = EvalSettings(Threat("L1", 2.0), attack, batch_size=8, progress=False, keep_adversarials=True)
    report = evaluate(model, x, y, settings, route="adv")
    assert report.threat.label == "L1 2" and report.robust_acc < report.clean_acc == 0.75
    assert (perturbation_size(report.adversarials["images"] - x[report.adversarials["indices"]], "L1")
            <= 2.0 + 1e-4).all()
    assert not report.flags
    # one batch of all the images: exactly AutoAttack's own answer, APGD-L1's restarts and schedule included
    adversary = PyAutoAttack(fold_route(model, "adv"), attacks=["apgd-ce"] if attack == "apgd-ce" else None,
                             device="cpu", eps=2.0, norm="L1", seed=0,
                             version="custom" if attack == "apgd-ce" else "standard")
    if attack == "apgd-ce":
        adversary.apgd.n_restarts, adversary.apgd.use_largereps = 5, True
    _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=8)
    assert report.robust_acc == (y_adv == y).float().mean().item()
