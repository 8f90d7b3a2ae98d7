"""``--budget``: durations, plan candidates, the schedule fitted to a plan, and real planning on tiny data."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
import yaml

from helpers import make_image_folder, tiny_splits
from resnetlab.budget import BudgetError, parse_duration, plan_run
from resnetlab.budget.planner import choose, predict_plans
from resnetlab.budget.plans import apply_plan, candidates, hardware_class, plan_source
from resnetlab.budget.tables import RESNET20_EPOCHS
from resnetlab.config import build_config
from resnetlab.engine import TrainHooks, train
from resnetlab.engine.precision import resolve_precision
from resnetlab.errors import ConfigError

CPU = torch.device("cpu")


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1h30m", 5400), ("1.5h", 5400), ("2m30s", 150), (" 45 S ", 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10", "m10", "1m1h", "1h1h", "0s", "ten minutes", "", "-5m", "1d"])
def test_parse_duration_refuses_with_one_line(text):
    with pytest.raises(ConfigError) as info:
        parse_duration(text)
    message = str(info.value)
    assert message.startswith("--budget") and "\n" not in message


def test_hardware_class():
    assert hardware_class(torch.device("cuda", 0), torch.bfloat16) == "gpu"
    assert hardware_class(CPU, torch.bfloat16) == "bf16_cpu"
    assert hardware_class(CPU, None) == "fp32_cpu"


def test_ladder_is_the_recipe_shortened_and_ends_with_the_recipe_itself():
    config = build_config("recipes/resnet32-he2016.yaml")  # 64,000 steps of 128 = 182.3 epochs of 45,000 images
    plans = candidates(config, "fp32_cpu", n_train=45000)
    epochs = [p.overrides["epochs"] for p in plans[:-1]]
    assert epochs == sorted(epochs) and epochs[0] == 1 and epochs[-1] < 182.4
    assert plans[-1].overrides == {}
    full = apply_plan(config, plans[-1], 45000)
    assert full.max_steps == 64000 and full.schedule.milestones == [32000, 48000]


def test_plan_fits_the_schedule_to_its_length():
    config = build_config("recipes/resnet32-he2016.yaml")  # the paper's schedule, no plan table
    six = apply_plan(config, next(p for p in candidates(config, "fp32_cpu", 45000) if p.overrides.get("epochs") == 6), 45000)
    steps = 6 * (45000 // 128)
    assert six.max_steps is None and six.epochs == 6
    # The paper's milestones sit at 1/2 and 3/4 of training; a 6-epoch plan keeps them there.
    assert six.schedule.milestones == [round(steps * 0.5), round(steps * 0.75)]
    kept = apply_plan(config, type(candidates(config, "fp32_cpu", 45000)[0])("mine", {"epochs": 6, "schedule.milestones": [100]}), 45000)
    assert kept.schedule.milestones == [100]  # a plan that sets the schedule itself is taken as written


def test_recipe_plan_table_is_used_for_its_machine_class_only():
    table = {"fp32_cpu": [{"epochs": 1, "model.options.widths": [16, 32, 32]}, {"epochs": 2}]}
    config = build_config("recipes/fast.yaml", {"budget.plans": table})
    assert [p.overrides for p in candidates(config, "fp32_cpu", 45000)] == table["fp32_cpu"]
    assert candidates(config, "gpu", 45000)[0].overrides == {"epochs": 1}  # no gpu table: the ladder
    small = apply_plan(config, candidates(config, "fp32_cpu", 45000)[0], 45000)
    assert small.model.options["widths"] == [16, 32, 32] and small.epochs == 1


@pytest.mark.parametrize("plans, fragment", [({"tpu": [{"epochs": 1}]}, "budget.plans.tpu"),
                                             ({"gpu": [{"widths": 3}]}, "each setting epochs"),
                                             ({"gpu": []}, "budget.plans.gpu")])
def test_bad_plan_tables_are_refused(plans, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        build_config(None, {"budget.plans": plans})


def _tiny_config(**overrides):
    # plain20 (ResNet-20 without shortcuts, the same cost) has no built-in plan table: these tests
    # exercise the epoch ladder; the ResNet-20 table has tests of its own below.
    return build_config(None, {"model.name": "plain20", "batch_size": 16, "epochs": 12, "eval_report": False, **overrides})


def _predict(config):
    return predict_plans(config, tiny_splits(64, 16), device=CPU, precision=resolve_precision("fp32", CPU))


def test_the_plan_shrinks_as_the_budget_does():
    hardware, predictions = _predict(_tiny_config())
    assert hardware == "fp32_cpu"
    times = [p.phases["total_s"] for p in predictions]
    assert times == sorted(times) and times[0] > 0  # more epochs never predicted cheaper
    epochs = [p.config.epochs for p in predictions]
    # Any time left between two plans' predictions picks the longer plan that fits, never one that does not.
    chosen = []
    for left in [t / 0.9 * (1 + 1e-9) for t in times] + [(a + b) / 2 / 0.9 for a, b in zip(times, times[1:])]:
        best = choose(predictions, 600, left)
        assert times[best] <= 0.9 * left and (best == len(times) - 1 or times[best + 1] > 0.9 * left)
        chosen.append((left, epochs[best]))
    chosen.sort()
    assert [e for _, e in chosen] == sorted(e for _, e in chosen)  # a larger budget never gets a shorter plan
    assert chosen[0][1] == 1 and chosen[-1][1] == 12


def test_plan_run_records_the_choice_in_the_config():
    config, record = plan_run(_tiny_config(), 3600, splits=tiny_splits(64, 16), device=CPU, precision=resolve_precision("fp32", CPU),
                              started_at=time.perf_counter())
    assert record["plan"].startswith("the recipe's full length") and config.epochs == 12
    assert config.budget.chosen == record and config.budget.seconds == 3600
    assert record["predicted_s"] <= 0.9 * record["left_at_plan_s"]
    assert set(record["probe"]["step_s"]) == {"32"} and record["probe"]["eval_image_s"] > 0


def test_a_budget_no_plan_fits_fails_before_training():
    _, predictions = _predict(_tiny_config())
    with pytest.raises(BudgetError) as info:
        choose(predictions, 1.0, 0.01)
    message = str(info.value)
    assert "--budget 1s" in message and "smallest plan (1 epoch)" in message and "give at least" in message


def test_training_past_the_deadline_stops_and_still_finishes_the_run(tmp_path):
    """The guard: a machine that turns slower than the probe saw still gets a finished run in time."""
    splits = tiny_splits(64, 16)
    config, record = plan_run(_tiny_config(run_dir=str(tmp_path / "run")), 3600, splits=splits, device=CPU,
                              precision=resolve_precision("fp32", CPU), started_at=time.perf_counter())
    config.budget.chosen["train_deadline_s"] = 0.6  # as if the probe had predicted a machine 100x faster

    def slower_machine(context, state, step_record):
        time.sleep(0.05)

    result = train(config, splits=splits, hooks=TrainHooks(after_step=slower_machine))
    summary = result.summary
    assert result.completed and summary["stopped_early"] and "--budget deadline" in summary["stop_reason"]
    # Each step sleeps 0.05 s, so 0.6 s of training is at most 12 steps, whatever else the steps cost.
    assert 0 < result.steps <= 12 < 12 * (64 // 16)
    assert (tmp_path / "run" / "model.safetensors").exists() and summary["test_acc"] is not None
    # Without the guard's deadline the same run trains every planned step.
    config.budget.chosen["train_deadline_s"] = 3600
    config.run_dir = str(tmp_path / "run2")
    assert train(config, splits=splits).steps == 12 * (64 // 16)


@pytest.mark.slow
def test_budgeted_cli_run_ends_within_its_budget(tmp_path):
    data = make_image_folder(tmp_path / "images", classes=3, per_class=16, test_per_class=4)
    budget_s = 40
    run_dir = tmp_path / "run"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "resnetlab", "train", "--model", "resnet20", "--data", str(data),
                           "--budget", f"{budget_s}s", "--batch-size", "8", "--run-dir", str(run_dir), "--threads", "1"],
                          capture_output=True, text=True, timeout=budget_s * 3)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    assert wall <= budget_s, f"the run took {wall:.1f} s of a {budget_s} s budget"
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())["budget"]
    assert recorded["seconds"] == budget_s and recorded["chosen"]["plan"] in done.stdout
    assert "plans from the built-in resnet20 table" in done.stdout  # --model resnet20 without a recipe
    assert recorded["chosen"]["probe"]["step_s"]  # the probe's figures are kept with the run
    assert (run_dir / "model.safetensors").exists()


def test_budget_refuses_epochs_and_resume(tmp_path):
    for extra in (["--epochs", "3"], ["--resume", str(tmp_path)]):
        done = subprocess.run([sys.executable, "-m", "resnetlab", "train", "--budget", "5m", *extra],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "--budget" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_resnet20_without_a_recipe_plans_past_the_default_length_and_anneals_each_plan():
    """The issue's `--model resnet20 --budget 20m`: the defaults' 10 epochs no longer cap the plans."""
    config = build_config(None, {"model.name": "resnet20"})
    assert config.epochs == 10 and config.schedule.milestones == []  # the defaults: 10 epochs, constant lr
    for hardware in ("fp32_cpu", "bf16_cpu", "gpu"):
        plans = candidates(config, hardware, n_train=45000)
        assert [p.overrides["epochs"] for p in plans] == list(RESNET20_EPOCHS) and max(RESNET20_EPOCHS) > 10
        assert "built-in resnet20 table" in plan_source(config, hardware)
    fifteen = apply_plan(config, next(p for p in plans if p.overrides["epochs"] == 15), 45000)
    # The paper's crop, flip, batch and lr; a cosine that reaches its floor at the run's own end.
    assert fifteen.epochs == 15 and fifteen.max_steps is None
    assert (fifteen.schedule.name, fifteen.schedule.min_lr, fifteen.schedule.warmup) == ("cosine", 0.0, 0)
    assert (fifteen.augment.crop_padding, fifteen.augment.pad_mode, fifteen.augment.flip) == (4, "zeros", True)
    assert (fifteen.batch_size, fifteen.optim.lr, fifteen.optim.momentum, fifteen.optim.weight_decay) == (128, 0.1, 0.9, 1e-4)


def test_the_builtin_table_is_only_for_runs_from_scratch_without_a_recipe():
    own = build_config("recipes/resnet20-he2016.yaml")
    assert "recipes/resnet20-he2016.yaml's budget.plans.fp32_cpu table" == plan_source(own, "fp32_cpu")
    other = build_config("recipes/resnet32-he2016.yaml")  # a recipe without a table: its own schedule, shortened
    assert plan_source(other, "fp32_cpu") == "recipes/resnet32-he2016.yaml shortened to fewer epochs"
    scratch = build_config(None, {"model.name": "resnet20"})
    assert plan_source(scratch, "fp32_cpu", from_scratch=False) == "the built-in defaults shortened to fewer epochs"
    assert max(p.overrides.get("epochs", 10) for p in candidates(scratch, "fp32_cpu", 45000, from_scratch=False)) == 10
    assert plan_source(build_config(None, {"model.name": "plain20"}), "gpu") == "the built-in defaults shortened to fewer epochs"


def test_the_resnet20_recipe_table_tries_the_builtin_plans():
    recipe = build_config("recipes/resnet20-he2016.yaml")
    builtin = build_config(None, {"model.name": "resnet20"})
    for hardware in ("fp32_cpu", "bf16_cpu", "gpu"):
        mine = [apply_plan(recipe, p, 45000) for p in candidates(recipe, hardware, 45000)]
        theirs = [apply_plan(builtin, p, 45000) for p in candidates(builtin, hardware, 45000)]
        # The same runs, whichever way the user asked for them.
        assert [_what_trains(c) for c in mine] == [_what_trains(c) for c in theirs]


def _what_trains(c):
    return c.epochs, c.max_steps, c.schedule.name, c.schedule.min_lr, c.augment, c.optim, c.batch_size


def test_resnet20_budget_run_plans_past_the_defaults_with_a_real_probe():
    config = build_config(None, {"model.name": "resnet20", "batch_size": 16, "eval_report": False})
    chosen, record = plan_run(config, 3600, splits=tiny_splits(64, 16), device=CPU, precision=resolve_precision("fp32", CPU),
                              started_at=time.perf_counter())
    assert record["plans_from"] == "the built-in resnet20 table (resnetlab/budget/tables.py)"
    times = [c["predicted_s"] for c in record["candidates"]]
    assert len(times) == len(RESNET20_EPOCHS) and times == sorted(times)
    # An hour fits more than the defaults' 10 epochs of 64 images: the longest plan that fits is trained.
    fitting = [e for e, c in zip(RESNET20_EPOCHS, record["candidates"]) if c["fits"]]
    assert chosen.epochs == max(fitting) > 10 and record["plan"] == f"{chosen.epochs} epochs"
    assert chosen.schedule.name == "cosine" and chosen.augment.flip
