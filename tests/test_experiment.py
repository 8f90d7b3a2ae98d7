"""`resnetlab experiment degradation` end to end on a tiny budget (tiny image folder, 1 epoch)."""

from __future__ import annotations

import json
import statistics

import pytest
from helpers import make_image_folder, one_thread

from resnetlab.cli import main
from resnetlab.errors import ConfigError
from resnetlab.experiments.degradation import (
    DegradationConfig, default_grad_steps, depth_gaps, preset_config, run_degradation,
)


ARGS = ["--depths", "20", "--seeds", "1,2", "--epochs", "1", "--batch-size", "16", "--val-size", "16",
        "--grad-steps", "0,3", "--device", "cpu"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("degradation")
    data = make_image_folder(tmp / "images", per_class=20, flat=True)  # class folders only: the experiment carves val
    out = tmp / "out"
    with one_thread():  # module scope: conftest's per-test fixture is not active yet
        code = main(["experiment", "degradation", "--data", str(data), "--out", str(out), *ARGS])
    assert code == 0
    return out, data


@pytest.mark.slow
def test_writes_figures_table_and_one_run_per_model_and_seed(experiment):
    out, _ = experiment
    for name in ("degradation.png", "grad_flow.png", "results.md", "results.json", "recipe.yaml", "experiment.json"):
        assert (out / name).is_file(), name
    for name in ("degradation.png", "grad_flow.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 300_000
    runs = sorted(p.relative_to(out).as_posix() for p in (out / "runs").glob("*/seed-*"))
    assert runs == ["runs/plain20/seed-1", "runs/plain20/seed-2", "runs/resnet20/seed-1", "runs/resnet20/seed-2"]
    for run in runs:
        assert (out / run / "summary.json").is_file() and (out / run / "model.safetensors").is_file()


@pytest.mark.slow
def test_table_numbers_equal_the_runs_metrics(experiment):
    out, _ = experiment
    results = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    for model in results["models"]:
        finals = {}
        for seed in (1, 2):
            rows = [json.loads(line) for line in (out / "runs" / model["model"] / f"seed-{seed}" / "metrics.jsonl").read_text().splitlines()]
            assert len(rows) == 1 and rows[-1]["step"] == 4  # 64 training images / batch 16, one epoch
            finals[seed] = (1 - rows[-1]["train_acc"], 1 - rows[-1]["val_acc"])
            run = next(r for r in results["runs"] if r["model"] == model["model"] and r["seed"] == seed)
            assert run["final_train_error"] == pytest.approx(finals[seed][0], abs=1e-12)
            assert run["final_val_error"] == pytest.approx(finals[seed][1], abs=1e-12)
        train = [finals[s][0] for s in (1, 2)]
        val = [finals[s][1] for s in (1, 2)]
        assert model["final_train_error"]["mean"] == pytest.approx(statistics.fmean(train))
        assert model["final_train_error"]["std"] == pytest.approx(statistics.stdev(train))
        assert model["final_val_error"]["mean"] == pytest.approx(statistics.fmean(val))
        low, high = model["final_val_error"]["interval"]
        half = 12.7062047 * statistics.stdev(val) / 2**0.5  # t(0.975, 1 dof) s / sqrt(n)
        assert low == pytest.approx(statistics.fmean(val) - half, abs=1e-6) and high == pytest.approx(statistics.fmean(val) + half, abs=1e-6)
        row = next(line for line in md.splitlines() if line.startswith(f"| {model['model']} |"))
        assert f"{100 * statistics.fmean(train):.2f} ± {100 * statistics.stdev(train):.2f}" in row
        assert f"{100 * statistics.fmean(val):.2f} ± {100 * statistics.stdev(val):.2f}" in row
    assert "resnetlab experiment degradation --preset cpu --depths 20 --seeds 1,2 --epochs 1" in md
    assert md.count("resnetlab train --recipe") == 4


@pytest.mark.slow
def test_grad_norms_logged_at_the_requested_steps_for_every_layer(experiment):
    out, _ = experiment
    for run in (out / "runs").glob("*/seed-*"):
        records = [json.loads(line) for line in (run / "grad_norms.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [0, 3]
        for record in records:
            convs = [k for k in record["grad_norms"] if k.endswith("conv1.weight") or k.endswith("conv2.weight")]
            assert len(convs) == 19  # the stem conv + 2 per block x 9 blocks
            assert all(v > 0 for v in record["grad_norms"].values())
            assert record["activations"]  # activation statistics of the same step
    results = json.loads((out / "results.json").read_text())
    for run in results["runs"]:
        assert [g["step"] for g in run["grad_norms"]] == [0, 3]
        assert all(len(g["layers"]) == 20 for g in run["grad_norms"])  # 19 convs + fc: depth 20 in both kinds


@pytest.mark.slow
def test_repeating_the_command_reuses_runs_and_other_settings_are_refused(experiment, capsys):
    out, data = experiment
    before = (out / "runs/plain20/seed-1/metrics.jsonl").read_text()
    assert main(["experiment", "degradation", "--data", str(data), "--out", str(out), *ARGS]) == 0
    assert (out / "runs/plain20/seed-1/metrics.jsonl").read_text() == before
    capsys.readouterr()
    changed = [a if a != "1,2" else "1,3" for a in ARGS]
    assert main(["experiment", "degradation", "--data", str(data), "--out", str(out), *changed]) == 1
    err = capsys.readouterr().err
    assert "other settings" in err and "seeds" in err and str(out) in err


def test_bad_options_name_the_option(tmp_path, capsys):
    assert main(["experiment", "degradation", "--depths", "21", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "--depths 21" in err and "20" in err and "56" in err
    assert main(["experiment", "degradation", "--seeds", "1,x", "--out", str(tmp_path / "o")]) == 1
    assert "--seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["experiment", "degradation", "--epochs", "1", "--steps", "3"])
    with pytest.raises(ConfigError, match="--grad-steps 9"):
        from helpers import tiny_splits

        run_degradation(DegradationConfig(depths=[20], seeds=[1], epochs=1, batch_size=16, grad_steps=[9], device="cpu"),
                        tmp_path / "o2", splits=tiny_splits())
    assert not (tmp_path / "o" / "runs").exists()


def test_presets_and_defaults():
    cpu = preset_config("cpu")
    assert cpu.depths == [20, 56] and cpu.epochs and cpu.steps is None
    full = preset_config("full", seeds=[7])
    assert full.steps == 64000 and full.epochs is None and full.seeds == [7] and full.val_size == 5000
    assert preset_config("full", epochs=3).steps is None  # an explicit budget replaces the preset's
    with pytest.raises(ConfigError, match="--preset"):
        preset_config("huge")
    assert default_grad_steps(64000) == [0, 6400, 32000, 63999]
    assert default_grad_steps(3) == [0, 1, 2]


def test_depth_gaps_sign():
    def entry(kind, depth, train, val):
        return {"kind": kind, "depth": depth, "model": f"{kind}{depth}",
                "final_train_error": {"mean": train}, "final_val_error": {"mean": val}}

    gaps = depth_gaps([entry("plain", 20, 0.10, 0.2), entry("plain", 56, 0.15, 0.22),
                       entry("resnet", 20, 0.09, 0.2), entry("resnet", 56, 0.07, 0.18)])
    assert [(g["deep"], round(g["train_error_diff"], 6)) for g in gaps] == [("plain56", 0.05), ("resnet56", -0.02)]
