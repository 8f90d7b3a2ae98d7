"""Is run A better than run B on the same images? Paired tests from the per-image predictions.

``compare`` calls :func:`compare_pair` for each run against the first one. Runs evaluated on the same
images (their ``eval/predictions.csv``, matched by file path, else by index) give:

- McNemar's exact test: under "equally accurate", each image that exactly one of the two gets right
  is equally likely to favour either, so the count favouring A among the n discordant images is
  Binomial(n, 1/2) (McNemar 1947; the exact form of Edwards 1948's chi-square);
- a paired bootstrap interval of the accuracy difference (images resampled, both runs' answers on an
  image kept together; :func:`resnetlab.evaluation.metrics.bootstrap_mean_ci`, seeded);
- for multi-seed runs, the Student's t interval of the per-seed differences over the seeds both runs
  share (:func:`resnetlab.stats.t_interval`), which also counts training noise: then the verdict
  rests on it, since one test set says nothing about how much another seed would move.

The verdict is one sentence: "A beats B (+1.20 points, 95% CI +0.40 to +2.00, McNemar p=0.003)", or
"no significant difference ...". Significant means p < 0.05 and an interval that excludes 0.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

from resnetlab.errors import DataError
from resnetlab.evaluation.metrics import bootstrap_mean_ci
from resnetlab.runs import RunDir
from resnetlab.stats import t_interval

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 2000


def mcnemar_exact(a_correct, b_correct) -> dict:
    """McNemar's exact test of paired right/wrong answers: ``{a_only, b_only, discordant, p_value}`` (two-sided)."""
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mcnemar_exact: {a.shape} and {b.shape} answers are not paired")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    n = a_only + b_only
    p = 1.0 if n == 0 else float(binomtest(a_only, n, 0.5, alternative="two-sided").pvalue)
    return {"a_only": a_only, "b_only": b_only, "discordant": n, "p_value": min(1.0, p)}


def paired_bootstrap(a_correct, b_correct, *, seed: int = 0, n_resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95) -> dict:
    """Percentile bootstrap interval of accuracy(A) - accuracy(B), resampling images (pairs kept together)."""
    diff = np.asarray(a_correct, dtype=np.float64) - np.asarray(b_correct, dtype=np.float64)
    return bootstrap_mean_ci(diff, n_resamples=n_resamples, seed=seed, level=level)


def _correct(rows: list[dict], where: str) -> dict[str, tuple[str, bool]]:
    """key -> (true label, right?) where the key is the image's path, or its index when paths are missing."""
    by_path = all(row.get("path") for row in rows)
    out = {}
    for row in rows:
        key = row["path"] if by_path else f"#{row['index']}"
        try:
            out[key] = (row.get("true", ""), bool(int(row["correct"])))
        except (TypeError, ValueError):
            raise DataError(f"{where}: predictions row {row.get('index')!r} has correct={row.get('correct')!r}, expected 0 or 1") from None
    return out


def align(rows_a: list[dict], rows_b: list[dict], name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    """Right/wrong of A and B on the same images, in one order; DataError when the image sets differ."""
    a, b = _correct(rows_a, name_a), _correct(rows_b, name_b)
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        example = (only_a or only_b)[0]
        raise DataError(f"{name_a} and {name_b} were evaluated on different images ({len(a)} vs {len(b)}; "
                        f"{len(only_a)} only in {name_a}, {len(only_b)} only in {name_b}, e.g. {example!r}): "
                        "a paired test needs the same evaluation set")
    keys = sorted(a)
    relabelled = [k for k in keys if a[k][0] != b[k][0]]
    if relabelled:
        raise DataError(f"{name_a} and {name_b} give {relabelled[0]!r} different true labels ({a[relabelled[0]][0]!r} vs "
                        f"{b[relabelled[0]][0]!r}): they were not evaluated on the same labelled images")
    return np.array([a[k][1] for k in keys]), np.array([b[k][1] for k in keys])


def image_level(a_correct: np.ndarray, b_correct: np.ndarray, seed: int = 0) -> dict:
    """Accuracies, their difference (A - B), McNemar's exact test and the paired bootstrap interval."""
    return {"num_images": int(a_correct.size), "accuracy_a": float(a_correct.mean()), "accuracy_b": float(b_correct.mean()),
            "difference": float(a_correct.mean() - b_correct.mean()), "mcnemar": mcnemar_exact(a_correct, b_correct),
            "bootstrap": paired_bootstrap(a_correct, b_correct, seed=seed)}


def _points(value: float) -> str:
    return f"{100 * value:+.2f}"


def _p_text(p: float) -> str:
    return f"p={p:.2g}" if p < 0.001 else f"p={p:.3f}"


def verdict(name_a: str, name_b: str, images: dict | None, seeds: dict | None) -> tuple[str, bool]:
    """(one sentence, significant?) from the image-level result and, when given, the seed-level interval."""
    by_seeds = bool(seeds and seeds.get("interval"))
    if by_seeds:
        diff, (low, high) = seeds["mean"], seeds["interval"]
        significant = low > 0 or high < 0
    elif images:
        diff, low, high = images["difference"], images["bootstrap"]["low"], images["bootstrap"]["high"]
        significant = images["mcnemar"]["p_value"] < ALPHA and (low > 0 or high < 0)
    else:
        return f"{name_a} vs {name_b}: not tested (no per-image predictions or seeds to pair)", False
    if significant and diff < 0:  # the winner first, its lead positive
        name_a, name_b, diff, low, high = name_b, name_a, -diff, -high, -low
    if by_seeds:
        evidence = f"{seeds['level']:.0%} t-interval over {seeds['n']} seeds {_points(low)} to {_points(high)}"
        if images:
            evidence += f"; McNemar {_p_text(images['mcnemar']['p_value'])} on one seed's images"
    else:
        evidence = f"{images['bootstrap']['level']:.0%} CI {_points(low)} to {_points(high)}, McNemar {_p_text(images['mcnemar']['p_value'])}"
    if significant:
        return f"{name_a} beats {name_b} ({_points(diff)} points, {evidence})", True
    return f"no significant difference between {name_a} and {name_b} ({_points(diff)} points for {name_a}, {evidence})", False


def compare_pair(a, b, *, seed: int = 0) -> dict:
    """Significance of run ``a`` against run ``b`` (``compare.Run`` objects: single runs or seed groups).

    Returns ``{a, b, images, seeds, sentence, significant, note}``: ``images`` the image-level result on
    the first pair of members (the seeds both share, else the first of each), ``seeds`` the t-interval
    of per-seed accuracy differences (None without two shared seeds), ``note`` why a part is missing.
    """
    members_a, members_b = a.seeds or [a], b.seeds or [b]
    seed_of = lambda run: (run.summary or {}).get("seed", (run.config or {}).get("seed"))  # noqa: E731
    by_seed_b = {seed_of(m): m for m in members_b}
    pairs = [(m, by_seed_b[seed_of(m)]) for m in members_a if seed_of(m) in by_seed_b and seed_of(m) is not None]
    notes = []
    images = None
    first_a, first_b = pairs[0] if pairs else (members_a[0], members_b[0])
    rows_a, rows_b = RunDir(first_a.path).read_predictions(), RunDir(first_b.path).read_predictions()
    if rows_a is None or rows_b is None:
        missing = first_a if rows_a is None else first_b
        notes.append(f"{missing.path} has no eval/predictions.csv (evaluate it to get per-image tests)")
    else:
        try:
            images = image_level(*align(rows_a, rows_b, a.name, b.name), seed=seed)
        except DataError as exc:
            notes.append(str(exc))
    seeds = None
    if a.seeds and b.seeds:
        diffs = []
        for member_a, member_b in pairs:
            acc_a, acc_b = _test_accuracy(member_a), _test_accuracy(member_b)
            if acc_a is not None and acc_b is not None:
                diffs.append(acc_a - acc_b)
        if len(diffs) >= 2:
            seeds = t_interval(diffs)
        else:
            notes.append(f"{a.name} and {b.name} share fewer than 2 seeds with a test accuracy: no seed-level interval")
    sentence, significant = verdict(a.name, b.name, images, seeds)
    return {"a": a.name, "b": b.name, "images": images, "seeds": seeds, "sentence": sentence, "significant": significant,
            "note": "; ".join(notes) or None}


def _test_accuracy(run) -> float | None:
    if run.eval and run.eval.get("accuracy") is not None:
        return float(run.eval["accuracy"])
    value = (run.summary or {}).get("test_acc")
    return float(value) if value is not None else None


def markdown_section(results: list[dict]) -> list[str]:
    """compare.md's "Significance" section: one row and one sentence per pair."""
    if not results:
        return []
    lines = ["## Significance", "",
             "Each run against the first, on the same images: McNemar's exact test and a paired bootstrap 95% interval of the "
             "accuracy difference (points, first-named run minus second); for multi-seed runs the 95% t-interval of per-seed differences.", "",
             "| A | B | images | difference | 95% CI | A only / B only right | McNemar p | seed-level 95% interval |",
             "|---|---|---:|---:|---|---:|---:|---|"]
    for r in results:
        im, sd = r["images"], r["seeds"]
        cells = [r["a"], r["b"]]
        if im:
            cells += [str(im["num_images"]), _points(im["difference"]), f"{_points(im['bootstrap']['low'])} to {_points(im['bootstrap']['high'])}",
                      f"{im['mcnemar']['a_only']} / {im['mcnemar']['b_only']}", _p_text(im["mcnemar"]["p_value"])[2:]]
        else:
            cells += ["-"] * 5
        cells.append(f"{_points(sd['interval'][0])} to {_points(sd['interval'][1])} (n={sd['n']})" if sd and sd.get("interval") else "-")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append("")
    for r in results:
        lines.append(f"- {r['sentence']}." + (f" Note: {r['note']}." if r.get("note") else ""))
    return lines + [""]
