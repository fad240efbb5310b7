"""An export laid out as a Hugging Face model repository, ready for ``huggingface-cli upload org/name DIR``::

    DIR/model.safetensors   the export's weights (the same bytes as its .safetensors)
    DIR/config.json         its architecture file: the spec that rebuilds it, the threat model, the dataset
    DIR/README.md           the model card: YAML front matter (library, tags, model-index) and the robustness
                            numbers with their 95% intervals, the threat model and how to load it
    DIR/model.sha256        SHA-256 of the three (sha256sum -c), checked when robust-sabn loads the folder

``robust-sabn eval DIR`` and ``robust-sabn export DIR`` load such a folder, or its copy in the Hugging Face cache
(``~/.cache/huggingface/hub/models--org--name``); nothing here touches the network.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from ..checksums import manifest_path, write_manifest
from ..errors import ConfigError
from ..io import all_or_nothing, atomic_write, atomic_write_text, check_writable
from ..model_files import HF_CONFIG, HF_WEIGHTS, arch_file, read_arch_file, safetensors_file
from ..tables import markdown_table, percent
from ..version import __version__

README = "README.md"


def write_hf_folder(weights: str | os.PathLike, folder: str | os.PathLike, report: Any = None,
                    overwrite: bool = False) -> list[Path]:
    """Write the export whose ``.pt`` weights are ``weights`` into ``folder`` as a Hugging Face model repository,
    all or nothing; ``report`` (an :class:`~robust_sabn.eval.EvaluationReport` of the export, single route) puts
    its accuracies in the model card. Returns the files written."""
    weights, folder = Path(weights), Path(folder)
    shared = safetensors_file(weights)
    if not shared.is_file():
        raise ConfigError(f"{shared} is missing (exports of earlier versions have none): export the model again")
    record = read_arch_file(arch_file(weights))
    paths = check_hf_folder(folder, overwrite)[:3]
    data = shared.read_bytes()
    with all_or_nothing():
        atomic_write(paths[0], lambda f: f.write(data))
        atomic_write_text(paths[1], json.dumps({**record, "library_name": "robust-sabn"}, indent=2) + "\n")
        atomic_write_text(paths[2], model_card(record, report))
        write_manifest(manifest_path(paths[0]), paths)
    return [*paths, manifest_path(paths[0])]


def check_hf_folder(folder: str | os.PathLike, overwrite: bool = False) -> list[Path]:
    """Refuse, before anything is written, a folder that holds a model already (unless ``overwrite``) or cannot be
    written; returns the paths of its files."""
    folder = Path(folder)
    paths = [folder / HF_WEIGHTS, folder / HF_CONFIG, folder / README, manifest_path(folder / HF_WEIGHTS)]
    if paths[0].exists() and not overwrite:
        raise ConfigError(f"{folder} holds a model already; pass --overwrite to replace it, or choose another folder")
    for path in paths:
        check_writable(path)
    return paths


def model_card(record: dict[str, Any], report: Any = None) -> str:
    """README.md of the folder: front matter for the Hub, then what the model is, how robust, and how to load it."""
    name, dataset, threat = record["name"], record.get("trained_on") or record["dataset"], record["threat"]
    metrics = []
    if report is not None:
        attack = f"{report.attack_description} ({report.backend})" if report.backend else report.attack_description
        metrics = [{"type": "accuracy", "name": "clean accuracy", "value": round(100 * report.clean_acc, 2)},
                   {"type": "robust_accuracy", "name": f"robust accuracy, {attack}, {threat['label']}",
                    "value": round(100 * report.robust_acc, 2)}]
    front = {"library_name": "robust-sabn", "pipeline_tag": "image-classification",
             "tags": ["adversarial-robustness", "robustbench", "image-classification", threat["norm"]],
             "datasets": [dataset],
             "model-index": [{"name": name, "results": [{
                 "task": {"type": "image-classification"},
                 "dataset": {"type": dataset, "name": dataset, "split": "test"}, "metrics": metrics}]}]}
    spec = record["spec"]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {name}", "",
             f"An adversarially trained image classifier: `{spec.get('arch') or spec.get('callable')}` "
             f"({record.get('route') or 'no'} route folded into plain normalization layers), trained on {dataset} for "
             f"the {threat['label']} threat model, exported with robust-sabn {__version__}.", "", "## Robustness", ""]
    if report is None:
        lines += ["Not evaluated at export. `robust-sabn eval <this folder> --n-examples 10000` runs the standard "
                  "AutoAttack and writes a report with 95% intervals."]
    else:
        lines += [markdown_table(["evaluation", "test images", "clean accuracy (%, 95% CI)",
                                  "robust accuracy (%, 95% CI)"],
                                 [[f"{attack}, {report.threat.label}, seed {report.seed}", report.n,
                                   percent(report.clean_acc, report.n, 2), percent(report.robust_acc, report.n, 2)]]),
                  "", "The intervals are 95% Wilson intervals of an accuracy measured on that many images: the "
                      "sampling error of the test subset, not of training."]
    lines += ["", "## Threat model", "",
              f"{threat['norm']} perturbations of radius {threat['label'].split(' ', 1)[1]} on images in [0, 1]. The "
              "model takes unnormalized images (the normalization is its first layer) and returns logits; one "
              "deterministic forward pass per image.", "",
              "## Loading", "", "```bash", "pip install robust-sabn",
              f"huggingface-cli download <org>/{name} --local-dir {name}",
              f"robust-sabn eval {name} --n-examples 1000        # or the cache folder models--<org>--{name}", "```",
              "", "```python", "from robust_sabn.model_files import load_trained_model", "",
              f"model = load_trained_model({name!r}).model  # checks model.sha256, builds config.json's architecture",
              "```", "",
              "`config.json` holds the architecture spec (JSON: nothing is unpickled, no code named by a file runs), "
              "the threat model and the dataset; `model.safetensors` the weights; `model.sha256` their SHA-256 "
              "(`sha256sum -c model.sha256`).", ""]
    return "\n".join(lines)
