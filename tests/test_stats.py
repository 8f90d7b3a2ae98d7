"""The one t-interval and percentage helper (resnetlab.stats) every report uses."""

import math

import pytest

from resnetlab.stats import pct, t_critical, t_interval


def test_t_interval_matches_student_t_by_hand():
    stats = t_interval([0.90, 0.92, 0.91])
    assert stats["mean"] == pytest.approx(0.91) and stats["std"] == pytest.approx(0.01) and stats["n"] == 3
    half = 4.302652729911275 * 0.01 / math.sqrt(3)  # t(0.975, 2) from a printed table
    assert stats["interval"] == pytest.approx([0.91 - half, 0.91 + half])
    assert t_critical(2) == pytest.approx(4.3027, abs=1e-3)
    # Two seeds: t(0.975, 1) = 12.706, far wider than the normal 1.96 a t-table fallback once rounded to.
    assert t_critical(1) == pytest.approx(12.7062, abs=1e-3)
    assert t_critical(200) == pytest.approx(1.9719, abs=1e-3)


def test_t_interval_one_key_schema_for_few_values():
    one = t_interval([0.5])
    assert one == {"mean": 0.5, "std": None, "interval": None, "n": 1, "level": 0.95, "values": [0.5]}
    assert t_interval([])["mean"] is None and t_interval([None, 0.4])["n"] == 1


def test_pct_formats_and_marks_missing():
    assert pct(0.12345) == "12.35%" and pct(0.5, digits=1, sign="") == "50.0"
    assert pct(None) == pct(float("nan")) == "n/a" and pct(None, missing="–") == "–"
