"""The quickstart's logic with tiny settings (the real run takes minutes)."""
import pytest
from fake_data import write_fashion_mnist

from robust_sabn.cli import main
from robust_sabn.cli.quickstart import QUICKSTART_STEPS, TABLE_HEADERS, quickstart_config, report, run_quickstart

pytestmark = pytest.mark.usefixtures("one_thread")


def test_quickstart_config_is_the_small_fashion_mnist_recipe():
    config = quickstart_config()
    assert (config.dataset, config.arch, config.norm, config.objective, config.eps) == (
        "fashion-mnist", "resnet_small", "sandwich", "hybrid", 0.1)
    assert config.out_dir.startswith("runs/quickstart-")
    assert quickstart_config(epochs=1, out_dir="x").epochs == 1


@pytest.mark.slow
def test_quickstart_trains_evaluates_and_keeps_its_run_folder(tmp_path):
    write_fashion_mnist(tmp_path / "data", n_train=72, n_test=24)
    config = quickstart_config(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "run"), epochs=1,
                               train_size=48, val_size=16, batch_size=16, width=4, progress=False, device="cpu")
    calls = []

    def extra(qs):
        calls.append(qs.model)
        qs.add_row("extra", "adv", 0.5, None, len(qs.y))

    steps = [*QUICKSTART_STEPS[:2], ("extra", extra)]
    qs = run_quickstart(config, test_size=20, pgd_steps=2, steps=steps)
    assert calls == [qs.model] and not qs.model.training
    evaluations = [row[:2] for row in qs.rows]
    assert evaluations == [["PGD-2 (Linf 0.1)", "clean"], ["PGD-2 (Linf 0.1)", "adv"],
                           ["PGD-2 (Linf 0.1), oracle routing", "clean for clean, adv for attacked"], ["extra", "adv"]]
    assert all(len(row) == len(TABLE_HEADERS) and row[-1] == 20 for row in qs.rows)
    oracle = qs.rows[2]
    assert oracle[2] == qs.rows[0][2] and oracle[3] == qs.rows[1][3]  # clean route's clean, adv route's robust
    assert qs.rows[3][2:4] == ["50.0 (29.9-70.1)", "-"]  # 10 of 20 images, with its 95% Wilson interval
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {"best.pt", "last.pt", "metrics.jsonl", "curves.png"}
    text = report(qs)
    assert text.splitlines()[0].startswith("| evaluation | route |") and str(tmp_path / "run") in text


def test_missing_dataset_says_how_to_get_it(tmp_path, capsys):
    assert main(["quickstart", "--data-dir", str(tmp_path / "nothing"), "--out-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dataset-fashion-mnist" in err and "--download" in err
    assert not (tmp_path / "run").exists()
