"""The CUDA paths, wherever a GPU exists (skipped elsewhere): every objective in each precision with channels_last,
a bit-for-bit resume with --deterministic, AutoAttack on a CUDA model with CPU images, two NCCL processes, the
compiled forms (evaluation and training) and the GPU benchmark. The CPU tests cover the same code on the CPU (fp16
attacks under CPU autocast, simulated GPU counts)."""
import pytest
import torch
import torch.multiprocessing as mp
from fake_data import write_fashion_mnist
from helpers import free_port
from test_training_ddp import worker

from robust_sabn import Threat, create_model, use_route
from robust_sabn.cli.bench.gpu import bench_gpu
from robust_sabn.cli.bench.timing import Timing
from robust_sabn.eval import EvalSettings, evaluate
from robust_sabn.io import load_checkpoint
from robust_sabn.training import TrainConfig, train
from robust_sabn.training.objectives import OBJECTIVES

pytestmark = [pytest.mark.cuda, pytest.mark.slow]


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_one_training_step_per_objective_and_precision(name, dtype):
    model = create_model("resnet_small", width=16, norm="sandwich").cuda().to(memory_format=torch.channels_last)
    objective = OBJECTIVES[name](threat=Threat(), step_size=10 / 255 if name == "fast" else 2 / 255, steps=2)
    x = torch.rand(16, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,), device="cuda")
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
        out = objective(model.train(), x, y)
    scaler.scale(out.loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(out.loss) and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_deterministic_resume_on_a_gpu_continues_bit_for_bit(tmp_path):
    write_fashion_mnist(tmp_path / "data", n_train=96, n_test=8)
    common = dict(dataset="fashion-mnist", data_dir=str(tmp_path / "data"), arch="resnet_small", width=16, eps=0.1,
                  steps=2, val_steps=1, val_size=16, epochs=2, batch_size=16, device="cuda", deterministic=True,
                  progress=False)
    whole = train(TrainConfig(**common, out_dir=str(tmp_path / "whole")))
    train(TrainConfig(**common, out_dir=str(tmp_path / "cut"), max_steps=3))
    resumed = train(TrainConfig(**common, out_dir=str(tmp_path / "cut")), resume=True)
    assert resumed.step == whole.step
    a, b = (load_checkpoint(path / "last.pt")["model"] for path in (tmp_path / "whole", tmp_path / "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_autoattack_on_a_cuda_model_with_cpu_images():
    model = create_model("resnet_small", width=8, norm="sandwich").eval().cuda()
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad(), use_route(model, "adv"):
        y = model(x.cuda()).argmax(1).cpu()
    report = evaluate(model, x, y, EvalSettings(Threat("Linf", 8 / 255), "apgd-ce", progress=False), route="adv")
    assert report.environment["device"].startswith("cuda") and report.robust_acc <= report.clean_acc == 1.0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_nccl_processes_end_with_identical_weights(tmp_path):
    write_fashion_mnist(tmp_path / "data", n_train=96, n_test=8)
    config = TrainConfig(dataset="fashion-mnist", data_dir=str(tmp_path / "data"), arch="resnet_small", width=16,
                         eps=0.1, steps=2, val_steps=1, val_size=16, epochs=1, batch_size=8, max_steps=4,
                         out_dir=str(tmp_path / "run"), device="cuda", progress=False)
    mp.spawn(worker, args=(2, free_port(), config.to_dict(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(torch.equal(v, ranks[1]["state"][k].to(v.device)) for k, v in ranks[0]["state"].items())


@pytest.mark.usefixtures("compile_cache")
def test_bench_gpu_prints_every_row():
    table = bench_gpu(arch="resnet_small", batch_size=16, steps=1, timing=Timing(1, 1), n_eval=16)
    assert table.count("\n| ") == 9 and "float16" in table and "split_routes" in table
    assert "numerics compiled (+ " in table and "training epoch of 50000 images" in table


@pytest.mark.usefixtures("compile_cache")
def test_the_compiled_form_on_a_gpu_names_its_mode_and_agrees_with_exact():
    model = create_model("resnet_small", width=8, norm="sandwich").eval().cuda()
    x = torch.rand(16, 3, 32, 32)
    with torch.no_grad(), use_route(model, "adv"):
        y = model(x.cuda()).argmax(1).cpu()
    reports = [evaluate(model, x, y, EvalSettings(Threat("Linf", 2 / 255), "pgd-5", numerics=numerics, progress=False),
                        route="adv") for numerics in ("exact", "compiled")]
    assert "max-autotune-no-cudagraphs" in reports[1].environment["numerics"] and reports[1].time["compile_s"] > 0
    assert abs(reports[0].robust_acc - reports[1].robust_acc) <= 1 / 16  # last digits can move one borderline point


@pytest.mark.usefixtures("compile_cache")
def test_train_compile_on_a_gpu(tmp_path):
    write_fashion_mnist(tmp_path / "data", n_train=96, n_test=8)
    result = train(TrainConfig(dataset="fashion-mnist", data_dir=str(tmp_path / "data"), arch="resnet_small",
                               width=16, eps=0.1, steps=2, val_steps=1, val_size=16, epochs=1, batch_size=16,
                               max_steps=3, device="cuda", compile=True, out_dir=str(tmp_path / "run"),
                               progress=False))
    assert result.step == 3 and result.records[-1]["compile_time"] > 0
