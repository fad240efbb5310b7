"""DistributedDataParallel on the CPU: two gloo processes end with identical models."""
import os

import pytest
import torch
import torch.multiprocessing as mp
from fake_data import write_fashion_mnist
from helpers import free_port, torchrun

from robust_sabn.distributed import start_processes
from robust_sabn.io import load_checkpoint
from robust_sabn.training.config import TrainConfig
from robust_sabn.training.loop import Trainer


def worker(rank: int, world_size: int, port: int, config: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    with start_processes(config["device"]) as processes:  # gloo on the CPU, NCCL on GPUs
        trainer = Trainer(TrainConfig.from_dict(config), processes, resume=False)
        result = trainer.run()
        released = trainer.net is trainer.model  # DDP let go of the group, so it can be torn down cleanly
        ema = trainer.scored_model().state_dict() if trainer.ema is not None else {}
        torch.save({"state": trainer.model.state_dict(), "ema": ema, "step": result.step, "released": released},
                   os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow
@pytest.mark.usefixtures("compile_cache")
@pytest.mark.parametrize("objective, norm, techniques", [
    ("hybrid", "sandwich", {}), ("madry", "dual", {}), ("trades", "bn", {}),
    ("mart", "sandwich", {"ema_decay": 0.9, "awp_gamma": 0.01, "label_smoothing": 0.1, "lr_schedule": "cosine"}),
    ("hybrid", "sandwich", {"ema_decay": 0.9, "awp_gamma": 0.01, "compile": True}),  # the graphs of test_compiled.py
])
def test_two_gloo_processes_end_with_identical_weights(tmp_path, objective, norm, techniques):
    write_fashion_mnist(tmp_path / "data", n_train=96, n_test=8)
    config = TrainConfig(dataset="fashion-mnist", data_dir=str(tmp_path / "data"), arch="resnet_small", width=4,
                         norm=norm, objective=objective, eps=0.1, steps=2, val_steps=1, val_size=16, epochs=2,
                         batch_size=8, max_steps=7, out_dir=str(tmp_path / "run"), device="cpu", progress=False,
                         **techniques)
    mp.spawn(worker, args=(2, free_port(), config.to_dict(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["step"] == ranks[1]["step"] == 7  # 80 images / (2 processes x 8) = 5 steps per epoch
    assert ranks[0]["released"] and ranks[1]["released"]
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["world_size"] == 2 and len(saved["rng"]) == 2
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
        assert torch.equal(value, saved["model"][key]), key
    assert bool(ranks[0]["ema"]) == ("ema_decay" in techniques)  # the weight average: alike on both, and saved
    for key, value in ranks[0]["ema"].items():
        assert torch.equal(value, ranks[1]["ema"][key]), key
        assert torch.equal(value, saved["ema"][key]), key


@pytest.mark.slow
def test_torchrun_launches_the_train_command(tmp_path):
    write_fashion_mnist(tmp_path / "data", n_train=96, n_test=8)
    done = torchrun("train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"), "--arch",
                    "resnet_small", "--width", "4", "--eps", "0.1", "--steps", "1", "--val-steps", "1", "--val-size",
                    "16", "--epochs", "1", "--batch-size", "8", "--out-dir", str(tmp_path / "run"), "--device", "cpu",
                    "--no-progress")
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (saved["world_size"], saved["step"], saved["epoch"]) == (2, 5, 1)
    assert "best robust validation accuracy" in done.stdout
