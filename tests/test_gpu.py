"""CUDA tests (issue 19): run by benchmarks/gpu/run.py on the H200; every test skips without CUDA.

What each checks, and its tolerance (fp32 runs unless the test is about precision; cuDNN may use
TF32 and non-deterministic backward kernels, so two GPU runs agree to rounding, not bit for bit):
- bf16 and fp16 autocast: the logits come out in that dtype, fp16 gets a GradScaler, and 25 steps
  on one batch cut its loss by more than half.
- channels-last: NHWC batches from the DeviceLoader, NHWC weights, and the same logits as NCHW
  (relative L2 error < 1e-2: TF32 rounding is ~3e-4).
- torch.compile mode="reduce-overhead": the step is replayed as CUDA graphs (the profiler sees
  cudaGraphLaunch), and 6 steps give the eager losses to 1e-2 relative (compiled kernels fuse and
  sum in another order: on the CPU, mode=default drifted 2e-3 from eager by step 4 of this test).
- the DeviceLoader on CUDA: the same batches as on the CPU (its random draws come from CPU
  generators) to 1e-5.
- resume on the GPU: 8 steps straight == 4, stop, new process, --resume, 4, to 1e-3 in every
  weight; the weights at step 4 differ from those by more (the comparison can fail).
- DDP with NCCL at world size 1 through a real torchrun subprocess: "DDP ... (nccl)" in its log,
  and the same weights as a plain run to 1e-3.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from helpers import kill_process_group
from resnetlab.config import OptimConfig
from resnetlab.data import AugmentConfig, DeviceLoader, load_splits
from resnetlab.engine.loop import StepOptions, TrainState, train_step
from resnetlab.engine.optim import build_optimizer, param_groups
from resnetlab.engine.precision import compile_model, resolve_compile, resolve_precision
from resnetlab.engine.schedule import TrainErrorWarmup
from resnetlab.models import create_model
from resnetlab.models.files import load_checkpoint_dict

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")
WEIGHT_TOLERANCE = 1e-3  # max |difference| of any weight between two GPU runs of the same steps (weights ~1e-1)
AUGMENT = AugmentConfig(crop_padding=4, pad_mode="zeros", flip=True)


@pytest.fixture(scope="module")
def train_set(small_image_folder):
    return load_splits(str(small_image_folder), val_size=16, seed=0).train


def make_state(model: nn.Module, precision: str = "fp32", compiled: nn.Module | None = None) -> TrainState:
    """The engine's training state for ``model`` (stepping ``compiled`` instead when given)."""
    optim = OptimConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4)
    return TrainState(model=model if compiled is None else compiled, optimizer=build_optimizer(param_groups(model, optim.weight_decay, False), optim),
                      criterion=nn.CrossEntropyLoss(), precision=resolve_precision(precision, CUDA), lr_fn=lambda step: optim.lr,
                      warmup=TrainErrorWarmup(None, 0.01, 50))


def loader(train_set, device, channels_last: bool = False, batch_size: int = 32) -> DeviceLoader:
    return DeviceLoader(train_set, batch_size, train=True, augment=AUGMENT, device=device, seed=0, mean=train_set.mean,
                        std=train_set.std, channels_last=channels_last)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize(("name", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_trains_in_that_precision(train_set, name, dtype):
    if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    torch.manual_seed(0)
    state = make_state(create_model("resnet20", num_classes=train_set.num_classes).to(CUDA), name)
    assert state.precision.dtype is dtype and (state.precision.scaler is not None) == (dtype is torch.float16)
    x, y = next(iter(loader(train_set, CUDA).epoch(0)))
    with state.precision.autocast():
        assert state.model(x).dtype is dtype
    losses = [train_step(state, x, y, StepOptions())["loss"] for _ in range(25)]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < 0.5 * losses[0], losses


def test_channels_last_batches_weights_and_same_logits(train_set):
    torch.manual_seed(0)
    nchw = create_model("resnet20", num_classes=train_set.num_classes).to(CUDA).eval()
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    x, _ = next(iter(loader(train_set, CUDA, channels_last=True).epoch(0)))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert nhwc.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        error = relative_error(nhwc(x), nchw(x.contiguous()))
    assert error < 1e-2, error
    state = make_state(nhwc.train())
    train_step(state, x, torch.zeros(len(x), dtype=torch.long, device=CUDA), StepOptions())
    assert nhwc.conv1.weight.is_contiguous(memory_format=torch.channels_last)  # the optimizer kept the layout


def test_reduce_overhead_replays_cuda_graphs_and_matches_eager(train_set):
    torch.manual_seed(0)
    eager_model = create_model("resnet20", num_classes=train_set.num_classes).to(CUDA)
    graph_model = copy.deepcopy(eager_model)
    setting = resolve_compile("reduce-overhead", CUDA)
    eager, graphed = make_state(eager_model), make_state(graph_model, compiled=compile_model(graph_model, setting))
    batches = list(loader(train_set, CUDA).epoch(0))[:2] * 3
    eager_losses = [train_step(eager, x, y, StepOptions())["loss"] for x, y in batches]
    graph_losses = [train_step(graphed, x, y, StepOptions(cudagraphs=True))["loss"] for x, y in batches]
    assert graph_losses == pytest.approx(eager_losses, rel=1e-2)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for x, y in batches[:2]:
            train_step(graphed, x, y, StepOptions(cudagraphs=True))
        torch.cuda.synchronize()
    names = {event.name for event in prof.events()}
    assert any("cudaGraphLaunch" in name for name in names), sorted(names)[:50]


def test_device_loader_on_cuda_gives_the_cpu_batches(train_set):
    on_cuda, on_cpu = loader(train_set, CUDA, batch_size=16), loader(train_set, "cpu", batch_size=16)
    seen = 0
    for (xg, yg), (xc, yc) in zip(on_cuda.epoch(1), on_cpu.epoch(1), strict=True):
        assert xg.device.type == "cuda" and yg.device.type == "cuda" and xg.dtype == torch.float32
        assert torch.equal(yg.cpu(), yc)
        torch.testing.assert_close(xg.cpu(), xc, atol=1e-5, rtol=0)
        seen += len(yg)
    assert seen == len(on_cuda) * 16 > 0


# ------------------------------------------------------------------ real `resnetlab train` processes
def run(cmd: list[str], timeout: float = 300) -> str:
    """Run ``cmd`` in its own process group (killed whatever happens); return its output, failing on non-zero exit."""
    env = dict(os.environ, OMP_NUM_THREADS="2")
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        kill_process_group(process)
    assert process.returncode == 0, output[-4000:]
    return output


def train_cmd(folder: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["-m", "resnetlab", "train", "--model", "resnet20", "--data", str(folder), "--device", "cuda", "--seed", "3",
            "--batch-size", "16", "--val-size", "16", "--max-steps", "8", "--run-dir", str(run_dir), "--set", "precision=fp32",
            "--set", "eval_report=false", "--set", "optim.lr=0.05", *extra]


def weights(run_dir: Path, step: int) -> dict:
    return load_checkpoint_dict(run_dir / "checkpoints" / f"last-{step:08d}.pt")["model"]


def max_difference(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in b if b[k].is_floating_point())


@pytest.mark.slow
def test_resume_on_the_gpu_matches_a_straight_run(tmp_path, small_image_folder):
    run([sys.executable, *train_cmd(small_image_folder, tmp_path / "straight")])
    # The runner stops the run after step 4 through a TrainHooks callback (the same CLI path otherwise).
    runner = Path(__file__).with_name("train_with_hooks.py")
    run([sys.executable, str(runner), "--stop-after-steps", "4", "--", *train_cmd(small_image_folder, tmp_path / "resumed")[2:]])
    at_stop = weights(tmp_path / "resumed", 4)  # read now: keep_last prunes it once the run goes on
    run([sys.executable, "-m", "resnetlab", "train", "--resume", str(tmp_path / "resumed")])
    straight = weights(tmp_path / "straight", 8)
    assert max_difference(weights(tmp_path / "resumed", 8), straight) < WEIGHT_TOLERANCE
    assert max_difference(at_stop, straight) > WEIGHT_TOLERANCE  # negative control: the comparison can fail


@pytest.mark.slow
def test_ddp_with_nccl_at_world_size_one_matches_a_plain_run(tmp_path, small_image_folder):
    output = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                  *train_cmd(small_image_folder, tmp_path / "ddp")])
    assert "DDP: rank 0 of 1 (nccl)" in output
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["device"] == "cuda:0"
    run([sys.executable, *train_cmd(small_image_folder, tmp_path / "plain")])
    assert max_difference(weights(tmp_path / "ddp", 8), weights(tmp_path / "plain", 8)) < WEIGHT_TOLERANCE
