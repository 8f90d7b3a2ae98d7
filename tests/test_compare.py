"""`resnetlab compare` over run directories in the engine's format (ARCHITECTURE.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from resnetlab.cli import main
from resnetlab.errors import DataError
from resnetlab.evaluation.compare import compare_runs, read_grad_norms, read_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(path: Path, *, model: str, val: list[float], train_loss: list[float], test_acc: float | None, seed: int = 0,
              grad: str | None = None, params: int = 270_000, val_size: int = 5000) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"model": {"name": model}, "data": {"spec": "cifar10", "val_size": val_size},
                                                      "seed": seed, "recipe": f"recipes/{model}.yaml"}))
    rows = [{"epoch": e + 1, "step": 10 * (e + 1), "train_loss": tl, "train_acc": 1 - tl / 3, "val_loss": tl * 1.1, "val_acc": v,
             "lr": 0.1, "images_per_sec": 1000.0, "epoch_time_s": 2.0, "elapsed_s": 2.0 * (e + 1)}
            for e, (v, tl) in enumerate(zip(val, train_loss))]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"model": model, "params": params, "recipe": f"recipes/{model}.yaml", "data": "cifar10", "seed": seed,
               "epochs": len(val), "steps": 10 * len(val), "train_time_s": 2.0 * len(val), "best_val_acc": max(val), "test_acc": test_acc}
    (path / "summary.json").write_text(json.dumps(summary))
    if grad == "engine":
        names = ["conv1.weight", "bn1.weight", "bn1.bias", "layer1.0.conv1.weight", "layer1.0.bn1.weight",
                 "layer1.0.shortcut.0.weight", "layer1.0.conv2.weight", "fc.weight", "fc.bias"]
        record = {"step": 0, "epoch": 0, "grad_norm": 1.0, "grad_norms": {n: float(i + 1) for i, n in enumerate(names)}, "activations": {}}
        (path / "grad_norms.jsonl").write_text(json.dumps(record) + "\n" + '{"step": 3, "grad_no')  # last line cut by a crash
    return path


@pytest.fixture
def runs(tmp_path):
    plain = write_run(tmp_path / "plain20", model="plain20", val=[0.4, 0.5, 0.55], train_loss=[1.8, 1.4, 1.2], test_acc=0.54, grad="engine")
    resnet = write_run(tmp_path / "resnet20", model="resnet20", val=[0.5, 0.62, 0.7], train_loss=[1.5, 1.0, 0.8], test_acc=0.69, grad="engine")
    group = tmp_path / "resnet20-seeds"
    for seed, (v, t) in {1: (0.70, 0.69), 2: (0.72, 0.71), 3: (0.74, 0.70)}.items():
        write_run(group / f"seed-{seed}", model="resnet20", val=[0.5, v], train_loss=[1.5, 0.9], test_acc=t, seed=seed)
    (group / "seeds.json").write_text(json.dumps({"seeds": [1, 2, 3], "runs": []}))
    return plain, resnet, group


def test_compare_cli_table_and_files(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].split()[:3] == ["run", "model", "params"]
    assert any(line.startswith("plain20 ") and "55.00%" in line and "54.00%" in line for line in lines)
    assert "(n=3)" in printed
    result = json.loads((out / "compare.json").read_text())
    by_name = {r["name"]: r for r in result["runs"]}
    group = by_name["resnet20-seeds"]
    assert group["seeds"] == [1, 2, 3]
    assert group["test_acc"]["mean"] == pytest.approx(0.70)
    assert group["test_acc"]["std"] == pytest.approx(np.std([0.69, 0.71, 0.70], ddof=1))
    assert group["test_acc"]["low"] < 0.70 < group["test_acc"]["high"]
    assert group["val_acc"]["mean"] == pytest.approx(0.72)
    single = by_name["plain20"]
    assert single["val_acc"]["value"] == 0.55 and single["val_acc"]["n"] == 5000
    assert single["val_acc"]["low"] < 0.55 < single["val_acc"]["high"]
    assert single["val_acc"]["high"] - single["val_acc"]["low"] < 0.04  # ±1.4% for 5000 images
    assert single["params"] == 270_000 and single["recipe"] == "plain20" and single["epochs"] == 3
    md = (out / "compare.md").read_text()
    assert "| plain20 | plain20 |" in md and "![curves.png](curves.png)" in md
    for name in ("curves.png", "error_curves.png", "grad_norms.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert Image.open(out / name).size[0] >= 600


def test_eval_report_supplies_the_test_interval(runs, tmp_path):
    _, resnet, _ = runs
    (resnet / "eval").mkdir()
    (resnet / "eval" / "metrics.json").write_text(json.dumps(
        {"accuracy": 0.69, "num_samples": 10000, "accuracy_ci": {"low": 0.681, "high": 0.699, "n": 10000}}))
    row = {r["name"]: r for r in compare_runs([resnet])["runs"]}["resnet20"]
    assert row["test_acc"] == {"value": 0.69, "low": 0.681, "high": 0.699, "n": 10000}


def test_grad_norm_reader_reads_the_engine_format(runs):
    plain, _, _ = runs
    engine = read_grad_norms(plain / "grad_norms.jsonl")
    assert len(engine) == 1  # the cut line is dropped
    # Conv/linear weights on the main path, in parameter order; BN, biases and shortcuts left out.
    assert [x["name"] for x in engine[0]["layers"]] == ["conv1", "layer1.0.conv1", "layer1.0.conv2", "fc"]
    assert [x["depth"] for x in engine[0]["layers"]] == [0, 1, 2, 3]


def test_not_a_run_dir(tmp_path, capsys):
    with pytest.raises(DataError, match="not a run directory"):
        read_run(tmp_path)
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1
    assert "not found" in capsys.readouterr().err
