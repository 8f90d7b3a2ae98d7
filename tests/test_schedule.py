"""Learning-rate schedules are pure functions of the step: tables of (step, expected lr)."""

import math

import pytest

from resnetlab.config import ScheduleConfig
from resnetlab.engine.schedule import StepPlan, TrainErrorWarmup, lr_at

PLAN = StepPlan(total_steps=1000, steps_per_epoch=100)


@pytest.mark.parametrize(
    "cfg, table",
    [
        (ScheduleConfig(name="constant"), [(0, 0.1), (999, 0.1)]),
        # He et al. 2016: /10 at 32k and 48k iterations (here scaled: 320, 480 steps).
        (ScheduleConfig(name="multistep", unit="steps", milestones=[320, 480]),
         [(0, 0.1), (319, 0.1), (320, 0.01), (479, 0.01), (480, 0.001), (999, 0.001)]),
        (ScheduleConfig(name="multistep", unit="epochs", milestones=[3, 6], gamma=0.2),
         [(299, 0.1), (300, 0.02), (600, 0.004)]),
        (ScheduleConfig(name="step", unit="epochs", step_size=2, gamma=0.5), [(199, 0.1), (200, 0.05), (400, 0.025)]),
        (ScheduleConfig(name="cosine"), [(0, 0.1), (500, 0.05), (1000, 0.0)]),
        (ScheduleConfig(name="cosine", min_lr=0.01), [(0, 0.1), (500, 0.055), (1000, 0.01)]),
        # Linear warm-up over 1 epoch (100 steps) from 0, then cosine over the remaining 900.
        (ScheduleConfig(name="cosine", warmup=1), [(0, 0.0), (50, 0.05), (100, 0.1), (550, 0.05), (1000, 0.0)]),
        (ScheduleConfig(name="multistep", unit="steps", milestones=[500], warmup=10, warmup_start_factor=0.1),
         [(0, 0.01), (5, 0.055), (10, 0.1), (500, 0.01)]),
        # One-cycle: lr/25 -> lr over the first 25%, then cosine down to lr/25/1e4.
        (ScheduleConfig(name="onecycle"), [(0, 0.004), (125, 0.052), (250, 0.1), (1000, 0.004 / 1e4)]),
    ],
)
def test_lr_table(cfg, table):
    for step, expected in table:
        assert lr_at(step, 0.1, cfg, PLAN) == pytest.approx(expected, rel=1e-9, abs=1e-12), (cfg.name, step)


def test_lr_is_monotone_non_increasing_after_warmup_for_cosine():
    cfg = ScheduleConfig(name="cosine", warmup=1)
    values = [lr_at(s, 0.1, cfg, PLAN) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert all(math.isfinite(v) for v in values)


def test_train_error_warmup_switches_on_measured_error_not_step_count():
    # He et al. 2016 Sec 4.2: lr 0.01 until the training error is below 80%.
    warm = TrainErrorWarmup(threshold=0.8, warmup_lr=0.01, window=4)
    assert warm.lr(0.1) == 0.01
    for step in range(100):  # 10% accuracy = 90% error: stays in warm-up however long it runs
        warm.update(step, correct=10, seen=100)
    assert not warm.done and warm.lr(0.1) == 0.01
    warm.update(100, correct=50, seen=100)  # window error (90+90+90+50)/4 = 80%: not yet below
    assert not warm.done
    warm.update(101, correct=50, seen=100)  # window error 70% < 80%: the warm-up ends here
    assert warm.done and warm.ended_at_step == 101
    assert warm.lr(0.1) == 0.1
    warm.update(104, correct=0, seen=100)  # once ended it never returns
    assert warm.lr(0.1) == 0.1


def test_train_error_warmup_state_round_trip():
    warm = TrainErrorWarmup(threshold=0.8, warmup_lr=0.01, window=3)
    warm.update(0, 5, 100)
    warm.update(1, 50, 100)
    other = TrainErrorWarmup(threshold=0.8, warmup_lr=0.01, window=3)
    other.load_state_dict(warm.state_dict())
    warm.update(2, 50, 100)
    other.update(2, 50, 100)
    assert warm.done == other.done and warm.state_dict() == other.state_dict()


def test_disabled_warmup_is_transparent():
    warm = TrainErrorWarmup(threshold=None, warmup_lr=0.01, window=3)
    assert warm.done and warm.lr(0.1) == 0.1
