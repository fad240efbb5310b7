"""Bad input found by probing (issue 18): numbers no run needs on every command, crafted architecture files and
model specs, values nested too deep or too long. Each ends in one line (exit 2, or one UserError from the API)
before any work: nothing is written, nothing is built, and no tensor is allocated for the model."""
import json
import zipfile

import pytest
import torch
from helpers import write_run_dir

from robust_sabn import create_model, export
from robust_sabn.checksums import manifest_path, sha256_of
from robust_sabn.cli import main
from robust_sabn.errors import CheckpointError, ConfigError
from robust_sabn.io import save_checkpoint
from robust_sabn.model_files import arch_file, load_trained_model
from robust_sabn.models import resnet
from robust_sabn.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("robust-sabn: error: ") and err.count("\n") == 1, err
    return err


def files_under(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ numbers on every command
@pytest.mark.parametrize("argv, message", [
    (["--route-mix", "1e999"], "trade-offs must lie in [0, 1] (0 = clean route, 1 = adv route), got '1e999'"),
    (["--route-mix", "0:1:1e-999999999"], "trade-offs take at most 9 decimal places, got '1e-999999999'"),
    (["--n-examples", "1e20"], "--n-examples must be an integer in [1, 100000000], got 100000000000000000000; "
                               "e.g. --n-examples 1000"),
    (["--batch-size", "0"], "--batch-size must be an integer in [1, 65536], got 0; e.g. --batch-size 256"),
    (["--route-mix", "0.5", "--recalibrate", "1e20"], "--recalibrate must be an integer in [1, 100000000]"),
    (["--eps", "1e20"], "eps must be a number in [0, 1], got 1e+20 (inputs lie in [0, 1]); e.g. --eps 8/255"),
    (["--threat-model", "L2", "--eps", "1e20"], "eps must be a number in [0, 2000], got 1e+20"),
    (["--eps-sweep", "0,1e9"], "--eps-sweep value must be a number in [0, 1], got 1e+09"),
    (["--attack", "pgd-99999999999999999999"], "the steps K of pgd-K must be an integer in [1, 10000], got "
                                               "99999999999999999999; e.g. --attack pgd-20"),
    (["--seed", "-1"], "--seed must be an integer in [0, 4294967295], got -1"),
])
def test_eval_numbers_out_of_range_are_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    run = write_run_dir(tmp_path)
    before = files_under(tmp_path)
    assert main(["eval", str(run), "--no-progress", *argv]) == 2
    assert message in one_line_error(capsys)
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("argv, message", [
    (["export", "run", "--name", "X2026", "--n-examples", "1e20"], "--n-examples must be an integer in [1, "),
    (["export", "run", "--name", "X2026", "--route-mix", "1e999"], "--route-mix must be a finite number"),
    (["bench", "eval", "--repeats", "1e20"], "--repeats must be an integer in [1, 1000], got 1000000000"),
    (["bench", "eval", "--width", "1000000"], "--width must be an integer in [1, 1024], got 1000000"),
    (["bench", "eval", "--eps", "2"], "eps must be a number in [0, 1], got 2"),
    (["bench", "norms", "--image-size", "1e9"], "--image-size must be an integer in [1, 1024]"),
    (["bench", "data", "--batch-size", "1e20"], "--batch-size must be an integer in [1, 65536]"),
    (["bench", "gpu", "--steps", "0"], "--steps must be an integer in [1, 10000], got 0; e.g. --steps 10"),
    (["bench", "train", "--epochs", "1e20"], "--epochs must be an integer in [1, 100000]"),
    (["bench", "train", "--milestones", "5", "1e20"], "--milestones must be an integer in [1, 100000]"),
    (["bench", "train", "--aa-size", "-1"], "--aa-size must be an integer in [0, 100000000], got -1"),
    (["quickstart", "--pgd-steps", "1e20"], "--pgd-steps must be an integer in [1, 10000]"),
    (["quickstart", "--seed", "2.5"], "--seed must be an integer, got '2.5'"),
])
def test_numbers_out_of_range_on_other_commands_are_one_line_before_any_work(tmp_path, capsys, monkeypatch, argv,
                                                                             message):
    run = write_run_dir(tmp_path / "model")
    before = files_under(tmp_path)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # where the commands would write by default
    assert main([str(run) if arg == "run" else arg for arg in argv]) == 2
    assert message in one_line_error(capsys)
    assert files_under(tmp_path) == before


# -------------------------------------------------------------------------------------- crafted architectures
@pytest.fixture
def exported(tmp_path):
    """An exported model; its architecture file's text, to be edited."""
    weights = export(create_model("resnet_small", width=4, norm="sandwich"), "Probe2026", route="adv",
                     model_dir=tmp_path / "models")
    return weights, arch_file(weights).read_text()


@pytest.fixture
def nothing_built(monkeypatch):
    """Building a zoo network fails the test: a refusal must come before anything is allocated."""
    def built(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(resnet.ResNet, "__init__", built)


CRAFTED = {  # the probes, then their neighbours
    "width 1000000": (lambda text: text.replace('"width": 4', '"width": 1000000'),
                      r"width must be an integer in \[1, 1024\], got 1000000 \(resnet_small at width 1024 holds"),
    "width 4.5": (lambda text: text.replace('"width": 4', '"width": 4.5'),
                  "width of resnet_small must be an integer, got 4.5"),
    "a 5000-digit width": (lambda text: text.replace('"width": 4', '"width": ' + "9" * 5000),
                           "it holds a number of thousands of digits"),
    "a 4000-digit width": (lambda text: text.replace('"width": 4', '"width": ' + "9" * 4000),
                           r"width must be an integer in \[1, 1024\], got an integer of about 400[01] digits"),
    "nested 100,000 deep": (lambda text: "[" * 100_000 + "]" * 100_000, "it is nested too deep"),
    "nested 50 deep": (lambda text: text.replace('"width": 4', '"width": 4, "x": ' + "[" * 50 + "]" * 50),
                       "it is nested deeper than 8 levels"),
    "over a megabyte": (lambda text: text + " " * 1_000_000, "it holds over 1,000,000 bytes"),
    "width x depth": (lambda text: text.replace('"width": 4', '"width": 1024, "depth": 8'),
                      "would hold about 3,171 million parameters, more than the 400 million"),
    "a NaN norm eps": (lambda text: text.replace('"norm_kwargs": {}', '"norm_kwargs": {"eps": NaN}'),
                       r"eps must be a number in \(0, 1\], got nan"),
    "a device argument": (lambda text: text.replace('"norm_kwargs": {}', '"norm_kwargs": {"device": "cuda"}'),
                          "norm 'bn' takes no argument 'device'"),
    "nine routes": (lambda text: text.replace('"routes": [', '"routes": ["a", "b", "c", "d", "e", "f", "g", '),
                    "routes must be 1 to 8 distinct names"),
}


def resign(weights) -> None:
    """Rewrite the export's SHA-256 manifest to match its files as they are now."""
    manifest = manifest_path(weights)
    names = [line.partition("  ")[2] for line in manifest.read_text().splitlines()]
    manifest.write_text("".join(f"{sha256_of(weights.parent / name)}  {name}\n" for name in names))


@pytest.mark.parametrize("case", CRAFTED)
def test_a_crafted_architecture_file_is_one_line_in_eval_and_in_robustbench_before_anything_is_built(
        exported, capsys, nothing_built, case):
    weights, text = exported
    edit, message = CRAFTED[case]
    crafted = edit(text)
    assert crafted != text
    arch_file(weights).write_text(crafted)
    resign(weights)  # a hostile file comes with a matching manifest
    assert main(["eval", str(weights), "--attack", "pgd-1", "--n-examples", "2", "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert str(arch_file(weights)) in err and "re-export the model" in err
    from robustbench.utils import load_model

    with pytest.raises(CheckpointError, match=message) as refused:  # RobustBench's own loader: the same line
        load_model("Probe2026", model_dir=weights.parents[2], dataset="cifar10", threat_model="Linf")
    assert "\n" not in str(refused.value) and f"robust-sabn: error: {refused.value}\n" == err
    assert not list(weights.parent.glob("eval*"))


def nested_checkpoint(path, depth: int) -> None:
    """A weights-only checkpoint whose model_spec holds a list nested ``depth`` deep: torch.save recurses and cannot
    write one, so its pickle is edited (``]`` opens a list, ``a`` appends the top one to the one below)."""
    placeholder = "NESTED"
    spec = {"arch": "resnet_small", "kwargs": {"width": 4, "x": placeholder}}
    save_checkpoint({"model": {"w": torch.zeros(1)}, "model_spec": spec}, path)
    with zipfile.ZipFile(path) as original:
        files = {name: original.read(name) for name in original.namelist()}
    pickled = b"X" + len(placeholder).to_bytes(4, "little") + placeholder.encode()  # BINUNICODE "NESTED"
    name = next(name for name in files if name.endswith("data.pkl"))
    assert pickled in files[name]
    files[name] = files[name].replace(pickled, b"]" * depth + b"a" * (depth - 1))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as edited:
        for name, data in files.items():
            edited.writestr(name, data)


def test_a_checkpoint_model_spec_nested_100000_deep_is_one_line_without_recursion(tmp_path, nothing_built):
    """torch.load unpickles deep nesting without recursing; checking it must not recurse either."""
    path = tmp_path / "deep.pt"
    nested_checkpoint(path, 100_000)
    with pytest.raises(CheckpointError, match=r"deep.pt \(model_spec\): 'kwargs' must be a mapping of plain JSON "
                                              "values .* nested at most 8 deep"):
        load_trained_model(path)


def test_a_checkpoint_model_spec_is_range_checked_like_an_architecture_file(tmp_path, capsys, nothing_built):
    path = tmp_path / "huge.pt"
    save_checkpoint({"model": {"w": torch.zeros(1)}, "model_spec": {"arch": "resnet_small", "kwargs": {"width": 10**6}},
                     "config": {"dataset": "cifar10"}}, path)
    assert main(["eval", str(path), "--attack", "pgd-1", "--n-examples", "2"]) == 2
    assert (f"{path} (model_spec): width must be an integer in [1, 1024], got 1000000" in one_line_error(capsys))


def test_architecture_files_robust_sabn_writes_stay_far_below_the_size_limit(exported):
    from robust_sabn.model_files import MAX_ARCH_BYTES

    weights, text = exported
    assert len(text) < 2048 < MAX_ARCH_BYTES and json.loads(text)["spec"]["kwargs"]["width"] == 4
    assert torch.equal(load_trained_model(weights).model.normalize.std, torch.ones(1, 3, 1, 1))


# ---------------------------------------------------------------------------------- bench eval, narrow model
@pytest.mark.slow
def test_bench_eval_of_a_narrow_checkpoint_skips_the_channels_last_row_with_its_reason(tmp_path, capsys):
    run = write_run_dir(tmp_path, n_test=4)  # resnet_small width 4: 1x1 strided shortcuts of 4 and 8 channels
    argv = ["bench", "eval", "--checkpoint", str(run), "--n-examples", "4", "--batch-size", "4", "--version",
            "custom", "--aa-attacks", "apgd-ce", "--repeats", "1", "--numerics", "channels-last",
            "--sharded-attack", "none"]
    assert main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| AutoAttack")]
    assert len(rows) == 1 and "numerics channels-last | skipped |" in rows[0]
    assert "oneDNN computes the weight gradient of strided 1x1 convolutions" in rows[0]


# ------------------------------------------------------------------------------ deep or long values elsewhere
DEEP = "[" * 100_000 + "]" * 100_000
LONG_NUMBER = "9" * 5000


@pytest.mark.parametrize("kwargs, message", [(DEEP, "nested too deep or too long"),
                                             ('{"width": ' + LONG_NUMBER + "}", "nested too deep or too long"),
                                             ('{"width": 1000000}', "width must be an integer in [1, 1024]")])
def test_model_kwargs_typed_on_the_command_line_are_checked_like_a_file(tmp_path, capsys, request, kwargs, message):
    run = write_run_dir(tmp_path)
    request.getfixturevalue("nothing_built")  # from here on
    before = files_under(tmp_path)
    assert main(["eval", str(run / "last.pt"), "--model", "resnet_small", "--model-kwargs", kwargs]) == 2
    assert message in one_line_error(capsys)
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("name, text, message", [
    ("deep.yaml", DEEP, "is nested too deep to be a config file"),
    ("deep.json", DEEP, "is nested too deep to be a config file"),
    ("long.json", '{"steps": ' + LONG_NUMBER + "}", "holds a number of thousands of digits, which no setting takes"),
    ("long.yaml", "steps: " + LONG_NUMBER, "holds a number of thousands of digits, which no setting takes"),
])
def test_a_config_file_nested_too_deep_or_with_a_huge_number_is_one_line(tmp_path, capsys, name, text, message):
    (tmp_path / name).write_text(text)
    assert main(["train", "--config", str(tmp_path / name), "--out-dir", str(tmp_path / "run")]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["dataset", "steps", "milestones", "progress"])
def test_settings_read_back_from_a_checkpoint_may_nest_deep_without_recursion(name):
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ConfigError) as refused:
        TrainConfig.from_dict({name: deep})
    assert str(refused.value).startswith(name) and len(str(refused.value)) < 200
