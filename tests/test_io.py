import os
import pickle

import pytest
import torch

from robust_sabn import CheckpointError, create_model
from robust_sabn.io import extract_state_dict, load_checkpoint, load_weights, save_checkpoint


def test_save_is_atomic_and_round_trips(tmp_path):
    model = create_model("resnet_small", width=4)
    path = save_checkpoint({"model": model.state_dict(), "epoch": 3}, tmp_path / "run" / "last.pt")
    assert os.listdir(tmp_path / "run") == ["last.pt"]
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3
    clone = load_weights(create_model("resnet_small", width=4), extract_state_dict(loaded))
    assert all(torch.equal(a, b) for a, b in zip(clone.state_dict().values(), model.state_dict().values()))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = save_checkpoint({"step": 1}, tmp_path / "last.pt")

    class Unsavable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"step": 2, "bad": Unsavable()}, path)
    assert load_checkpoint(path) == {"step": 1}
    assert os.listdir(tmp_path) == ["last.pt"]


def test_missing_truncated_and_garbage_files_are_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")
    path = save_checkpoint(create_model("resnet_small", width=4).state_dict(), tmp_path / "m.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_malicious_pickle_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, payload in (("zip.pt", None), ("raw.pt", pickle.dumps(_Exploit(), protocol=2))):
        path = tmp_path / name
        if payload is None:
            torch.save({"state_dict": _Exploit()}, path)
        else:
            path.write_bytes(payload)
        with pytest.raises(CheckpointError):
            load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_a_checkpoint_of_another_architecture_names_the_mismatch(tmp_path):
    path = save_checkpoint(create_model("resnet_small", width=8).state_dict(), tmp_path / "w8.pt")
    with pytest.raises(CheckpointError, match=r"does not match the architecture \(shape: conv1.weight"):
        load_weights(create_model("resnet_small", width=4), load_checkpoint(path), str(path))
    routed = create_model("resnet_small", width=8, norm="sandwich")
    with pytest.raises(CheckpointError, match="missing: .*unexpected: "):
        load_weights(routed, load_checkpoint(path))
    with pytest.raises(CheckpointError, match="no model state dict"):
        extract_state_dict({"epoch": 1})
