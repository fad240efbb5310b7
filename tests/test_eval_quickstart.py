"""The quickstart's evaluation steps: AutoAttack rows for both protocols, export and reload through RobustBench."""
import json

import pytest
from fake_data import write_fashion_mnist

import robust_sabn.cli.quickstart as quickstart
from robust_sabn.cli.quickstart import QUICKSTART_STEPS, TABLE_HEADERS, quickstart_config, run_quickstart


@pytest.mark.slow
@pytest.mark.channels_last  # trains width 4 in the default format: the run that hung on AVX2 (oneDNN issue 6035)
def test_quickstart_runs_autoattack_exports_and_reloads(tmp_path, monkeypatch):
    monkeypatch.setattr(quickstart, "AA_IMAGES", 6)
    write_fashion_mnist(tmp_path / "data", n_train=48, n_test=12)
    config = quickstart_config(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "run"), epochs=1,
                               train_size=32, val_size=16, batch_size=16, width=4, progress=False, device="cpu")
    qs = run_quickstart(config, test_size=12, pgd_steps=1, steps=[QUICKSTART_STEPS[0], *QUICKSTART_STEPS[2:]])
    labels = [row[0] for row in qs.rows]
    assert labels == ["AutoAttack standard (Linf 0.1), single route",
                      "AutoAttack standard (Linf 0.1), oracle routing",
                      "RobustBench load_model of the export (adv route folded into plain BN)"]
    assert all(len(row) == len(TABLE_HEADERS) for row in qs.rows)
    assert [row[-1] for row in qs.rows] == [6, 6, 12]
    assert (tmp_path / "run" / "eval" / "quickstart-autoattack.json").is_file()
    assert (tmp_path / "run" / "robustbench" / "models" / "cifar10" / "Linf" / "QuickstartSabn2026.pt").is_file()
    card = tmp_path / "run" / "robustbench" / "model_info" / "cifar10" / "Linf" / "QuickstartSabn2026.json"
    assert json.loads(card.read_text())["dataset"] == "fashion-mnist"  # filed under cifar10, named truthfully
    difference = next(note for note in qs.notes if "max |logit difference|" in note)
    assert float(difference.split("routed model ")[1].split(";")[0]) <= 1e-5
