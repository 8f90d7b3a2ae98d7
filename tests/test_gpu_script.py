"""benchmarks/gpu/run.py (issue 19): the prepared GPU run, rehearsed on the CPU with ``--dry-run``.

The dry run starts the same stage processes as the device run (prep, step, speed, sweep beside the
CUDA tests) at tiny sizes on a synthetic image folder; the summary must have every stage's figures,
measured, not placeholders. A second run with a deadline too short for its stages shows that the
deadline stops a stage, skips the rest and still writes the summary.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import time

import pytest

from helpers import REPO_ROOT, kill_process_group

SCRIPT = REPO_ROOT / "benchmarks" / "gpu" / "run.py"


def run_script(*args: str, timeout: float = 400) -> tuple[subprocess.CompletedProcess, float]:
    began = time.monotonic()
    process = subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # on SIGTERM it stops its stage process groups itself
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        kill_process_group(process)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err), time.monotonic() - began


@pytest.mark.slow
def test_dry_run_reports_every_stage_with_measured_figures(tmp_path, small_image_folder):
    out = tmp_path / "out"
    # A 240 s deadline (2.2x the default) leaves room for a loaded CI machine; an idle one needs ~45 s.
    proc, _ = run_script("--dry-run", "--data", str(small_image_folder), "--work", str(tmp_path / "work"), "--out", str(out),
                         "--deadline", "240")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    stages = summary["stages"]
    assert summary["dry_run"] is True and list(stages) == ["prep", "tests", "prewarm", "step", "speed", "sweep"]
    assert {name: stage["status"] for name, stage in stages.items()} == dict.fromkeys(stages, "ok")
    assert stages["prep"]["train_images"] == 64 and stages["prep"]["classes"] == 4
    assert set(stages["prewarm"]["speed"]) == {"fast", "record"} and all(r["compile_s"] > 0 for r in stages["prewarm"]["speed"].values())

    rows = {(r["model"], r["mode"]): r for r in stages["step"]["rows"]}
    for model in ("resnet20", "resnet56"):
        eager = rows[(model, "eager")]
        assert eager["images_per_s"] > 0 and eager["ms_per_step"] > 0 and eager["timed_steps"] >= 2
        assert eager["projected_64k_s"] == pytest.approx(64000 * eager["ms_per_step"] / 1000, rel=1e-3)
        assert "CUDA" in rows[(model, "reduce-overhead")]["skipped"]

    speed = stages["speed"]
    for kind in ("fast", "record"):
        recipe = speed["recipes"][kind]
        assert [r["seed"] for r in recipe["runs"]] == [0, 1] and recipe["compile_s"] > 0
        for run in recipe["runs"]:
            assert 0 <= run["val_acc_tta"] <= 1 and run["wall_s"] > 0 and run["steps"] == 2
        tta = recipe["val_acc_tta"]
        assert tta["n"] == 2 and tta["values"] == [r["val_acc_tta"] for r in recipe["runs"]]
        assert tta["interval"][0] <= tta["mean"] <= tta["interval"][1]
    assert speed["recipes"]["record"]["overrides"]["model.options.widths"] == [16, 32, 32]  # the dry run's tiny widths
    assert speed["time_ratio_fast_over_record"] > 0

    sweep = stages["sweep"]
    assert sweep["depths"] == [20, 32] and sweep["concurrent_processes"] == 2 and sweep["paused_s"] >= 0
    for run, paper in zip(sweep["runs"], (8.75, 7.51), strict=True):
        assert run["completed"] and run["steps"] == run["max_steps"] == 4 and run["paper_test_error"] == paper
        assert 0 <= run["best_val_error"] <= run["final_val_error"] <= 100 and run["projected_s"] > 0

    tests = stages["tests"]  # no CUDA here: every GPU test is collected and skipped
    assert tests["tests"] >= 6 and tests["skipped"] == tests["tests"] and tests["failures"] == tests["errors"] == 0

    text = (out / "summary.md").read_text()
    assert "DRY RUN" in text and "| resnet20 | 4/4 |" in text and "8.75%" in text
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert "logs/tests.log" in names and "sweep/resnet20/metrics.jsonl" in names
    assert (out / "tests.log").exists()


@pytest.mark.slow
def test_the_deadline_stops_a_stage_skips_the_rest_and_still_writes_the_summary(tmp_path, small_image_folder):
    out = tmp_path / "out"
    # 8 s less the 5 s reserve: under 2 s for the step stage (its share of 8 s), too little for a process
    # that imports torch, loads the images and times ResNet-20 and ResNet-56 (5-15 s here); the sweep,
    # started first, is stopped at the deadline and reports how far it got.
    proc, wall = run_script("--dry-run", "--data", str(small_image_folder), "--work", str(tmp_path / "work"), "--out", str(out),
                            "--deadline", "8", "--stages", "step,speed,sweep")
    stages = json.loads((out / "summary.json").read_text())["stages"]
    assert stages["step"]["status"] == "timeout" and stages["step"]["budget_s"] < 2
    assert stages["speed"]["status"] == "skipped"
    assert stages["sweep"]["status"] == "timeout" and [r["completed"] for r in stages["sweep"]["runs"]] == [False, False]
    assert proc.returncode == 0 and wall < 60, (proc.returncode, wall)


def test_missing_data_is_one_line_naming_the_option(tmp_path):
    proc, _ = run_script("--data", str(tmp_path / "absent.tar.gz"), "--out", str(tmp_path / "out"), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--data" in proc.stderr and "data-local/" in proc.stderr
