"""``compare`` significance (issue 24, item 5): McNemar's exact test, the paired bootstrap interval,
seed-level intervals and the one-sentence verdict, from the runs' per-image predictions."""

from __future__ import annotations

import csv
import json
from math import comb
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from resnetlab.cli import main
from resnetlab.evaluation.compare import compare_runs
from resnetlab.evaluation.significance import mcnemar_exact, paired_bootstrap


def _run(root: Path, name: str, correct, *, seed: int = 0, paths: list[str] | None = None) -> Path:
    """A finished run directory whose test report holds these per-image right/wrong answers (evaluate's file layout)."""
    run = root / name
    (run / "eval").mkdir(parents=True)
    correct = [bool(c) for c in correct]
    accuracy = sum(correct) / len(correct)
    (run / "summary.json").write_text(json.dumps({"model": "resnet20", "seed": seed, "test_acc": accuracy}))
    with open(run / "eval" / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "path", "true", "predicted", "confidence", "correct"])
        for i, ok in enumerate(correct):
            writer.writerow([i, paths[i] if paths else f"test/cat/{i:05d}.png", "cat", "cat" if ok else "dog", "0.9", int(ok)])
    (run / "eval" / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "num_samples": len(correct)}))
    return run


def _pair(n: int, a_only: int, b_only: int, both: int) -> tuple[list[bool], list[bool]]:
    a = [True] * both + [True] * a_only + [False] * b_only + [False] * (n - both - a_only - b_only)
    b = [True] * both + [False] * a_only + [True] * b_only + [False] * (n - both - a_only - b_only)
    return a, b


def test_mcnemar_exact_p_is_the_hand_computed_binomial():
    a, b = _pair(40, a_only=8, b_only=2, both=20)
    result = mcnemar_exact(a, b)
    # Two-sided exact: 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 2 * (1 + 10 + 45) / 1024.
    assert (result["a_only"], result["b_only"]) == (8, 2)
    assert result["p_value"] == pytest.approx(2 * (comb(10, 0) + comb(10, 1) + comb(10, 2)) / 2 ** 10, abs=1e-12)
    assert mcnemar_exact(*_pair(20, 5, 5, 5))["p_value"] == 1.0  # balanced discordance
    assert mcnemar_exact(*_pair(20, 0, 0, 10))["p_value"] == 1.0  # no discordant pair at all


@pytest.mark.parametrize("a_only,b_only", [(30, 12), (3, 17), (50, 49), (0, 9)])
def test_mcnemar_exact_matches_an_independent_implementation(a_only, b_only):
    a, b = _pair(200, a_only, b_only, both=90)
    got = mcnemar_exact(a, b)["p_value"]
    try:
        from statsmodels.stats.contingency_tables import mcnemar
    except ImportError:  # statsmodels is not a dependency: the binomial CDF, written out
        expected = min(1.0, 2 * binom.cdf(min(a_only, b_only), a_only + b_only, 0.5))
    else:
        table = [[90, a_only], [b_only, 200 - 90 - a_only - b_only]]
        expected = mcnemar(table, exact=True).pvalue
    assert got == pytest.approx(expected, rel=1e-9)


def test_paired_bootstrap_interval_covers_the_true_difference():
    # Correlated answers: B is right where A is, except on its own 5% of the images; true difference +0.05.
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(40):
        a = rng.random(2000) < 0.80
        b = a & (rng.random(2000) > 0.0625)  # P(b) = 0.80 * 0.9375 = 0.75
        ci = paired_bootstrap(a, b, seed=trial)
        covered += ci["low"] <= 0.05 <= ci["high"]
        assert ci["low"] < ci["estimate"] < ci["high"]
    assert 34 <= covered <= 40  # nominal 95%: 38 of 40 expected


def test_the_sentence_names_the_winner_and_flips_with_the_data(tmp_path, capsys):
    a, b = _pair(1000, a_only=60, b_only=20, both=700)
    base = _run(tmp_path, "baseline", b)
    better = _run(tmp_path, "better", a)
    result = compare_runs([base, better], tmp_path / "out")
    pair = result["significance"][0]
    assert pair["significant"] and pair["sentence"].startswith("better beats baseline (+4.00 points, 95% CI +")
    assert "McNemar p<" not in pair["sentence"] and "McNemar p=" in pair["sentence"]
    assert pair["images"]["mcnemar"]["p_value"] < 0.001
    assert "## Significance" in (tmp_path / "out" / "compare.md").read_text()

    worse = _run(tmp_path, "worse", b)  # the same answers, the roles swapped
    flipped = compare_runs([_run(tmp_path, "strong", a), worse])["significance"][0]
    assert flipped["sentence"].startswith("strong beats worse (+4.00 points")

    same = compare_runs([base, _run(tmp_path, "twin", _pair(1000, 21, 19, 700)[1])])["significance"][0]
    assert not same["significant"] and same["sentence"].startswith("no significant difference between twin and baseline")

    assert main(["compare", str(base), str(better), "--out", str(tmp_path / "cli")]) == 0
    assert "better beats baseline" in capsys.readouterr().out


def test_different_image_sets_are_refused_with_a_reason(tmp_path, capsys):
    a, b = _pair(100, 10, 2, 60)
    base = _run(tmp_path, "base", a)
    other = _run(tmp_path, "other", b, paths=[f"test/cat/other-{i}.png" for i in range(100)])
    pair = compare_runs([base, other])["significance"][0]
    assert pair["images"] is None and not pair["significant"]
    assert "evaluated on different images" in pair["note"] and "a paired test needs the same evaluation set" in pair["note"]
    assert main(["compare", str(base), str(other), "--out", str(tmp_path / "cli")]) == 0
    assert "evaluated on different images" in capsys.readouterr().out


def test_seed_groups_get_a_seed_level_interval(tmp_path):
    rng = np.random.default_rng(1)
    for group, accuracy in (("deep", 0.85), ("shallow", 0.80)):
        for seed in range(3):
            _run(tmp_path / group, f"seed-{seed}", rng.random(2000) < accuracy + 0.005 * seed, seed=seed)
    pair = compare_runs([tmp_path / "shallow", tmp_path / "deep"])["significance"][0]
    assert pair["seeds"]["n"] == 3
    assert pair["seeds"]["interval"][0] < pair["seeds"]["mean"] < pair["seeds"]["interval"][1]
    assert "t-interval over 3 seeds" in pair["sentence"] and pair["images"]["num_images"] == 2000
