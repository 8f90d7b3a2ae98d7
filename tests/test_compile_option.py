"""``model.compile: reduce-overhead`` (issue 19): torch.compile's CUDA-graph mode, CUDA only.

On a CPU it must be refused before anything is written (CUDA graphs do not exist there, and a run
that quietly trained uncompiled would report the wrong speed). The CUDA side itself (that graphs are
really replayed) is tested in tests/test_gpu.py; here the wiring: the mode reaches torch.compile,
and each step marks a new CUDA-graph iteration.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from resnetlab.cli import main
from resnetlab.config import build_config
from resnetlab.engine import precision as precision_module
from resnetlab.engine.loop import StepOptions, TrainState, train_step
from resnetlab.engine.precision import compile_model, resolve_compile, resolve_precision
from resnetlab.engine.schedule import TrainErrorWarmup
from resnetlab.errors import ConfigError


def test_reduce_overhead_is_a_config_choice_kept_on_cuda_and_refused_on_cpu():
    config = build_config(None, {"model.compile": "reduce-overhead"})
    assert config.model.compile == "reduce-overhead"
    # torch.device("cuda") is only a name here: resolving needs no GPU.
    assert resolve_compile("reduce-overhead", torch.device("cuda")) == "reduce-overhead"
    with pytest.raises(ConfigError, match=r"model.compile=reduce-overhead: CUDA graphs need a CUDA device.*on cpu"):
        resolve_compile("reduce-overhead", torch.device("cpu"))


def test_cli_refuses_reduce_overhead_on_cpu_in_one_line_and_writes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["train", "--model", "resnet20", "--data", str(tmp_path / "unused"), "--device", "cpu",
                 "--run-dir", str(run_dir), "--set", "model.compile=reduce-overhead"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and "model.compile=reduce-overhead" in err and "CUDA" in err, err
    assert not run_dir.exists()


@pytest.mark.parametrize(("setting", "mode"), [(True, None), ("reduce-overhead", "reduce-overhead")])
def test_compile_model_passes_the_mode_to_torch_compile(monkeypatch, setting, mode):
    calls = []
    monkeypatch.setattr(precision_module.torch, "compile", lambda model, **kwargs: calls.append(kwargs) or model)
    model = nn.Linear(2, 2)
    assert compile_model(model, setting) is model
    assert calls == [{"mode": mode}]
    calls.clear()
    assert compile_model(model, False) is model and calls == []


@pytest.mark.parametrize("cudagraphs", [False, True])
def test_each_step_marks_a_new_cuda_graph_iteration_only_in_that_mode(monkeypatch, cudagraphs):
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(True))
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    state = TrainState(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=nn.CrossEntropyLoss(),
                       precision=resolve_precision("fp32", torch.device("cpu")), lr_fn=lambda step: 0.1,
                       warmup=TrainErrorWarmup(None, 0.01, 50))
    x, y = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    for _ in range(3):
        train_step(state, x, y, StepOptions(cudagraphs=cudagraphs))
    assert len(marks) == (3 if cudagraphs else 0)
