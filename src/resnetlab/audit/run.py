"""``resnetlab data audit``: scan, then duplicates, balance, odd images and label errors, then the report."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from resnetlab.audit import audit_report, duplicates, label_issues, oddities
from resnetlab.audit.scan import Scan, merge, scan_dataset
from resnetlab.errors import ConfigError, DataError


LISTED_CROSS = 20_000  # cross-split pairs written to audit.json (counts are always complete)
LISTED_WITHIN = 1_000  # within-split pairs written, closest first


@dataclass
class AuditOptions:
    phash_distance: int = duplicates.PHASH_MAX_DISTANCE  # Hamming bits of 64
    min_correlation: float = duplicates.MIN_CORRELATION  # grey-thumbnail correlation confirming a pHash match
    min_cosine: float = duplicates.FEATURE_MIN_COSINE  # with a model only
    model: str | None = None  # MODEL whose penultimate features find near copies and feed the label check
    source_format: str | None = None
    label_errors: bool = True
    folds: int = label_issues.FOLDS
    seed: int = 0
    data_dir: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.phash_distance <= 64:
            raise ConfigError(f"--phash-distance must be between 0 and 64 bits, got {self.phash_distance}")
        if not -1.0 <= self.min_correlation <= 1.0:
            raise ConfigError(f"--min-correlation must be between -1 and 1, got {self.min_correlation}")
        if not -1.0 <= self.min_cosine <= 1.0:
            raise ConfigError(f"--min-cosine must be between -1 and 1, got {self.min_cosine}")
        if self.folds < 2:
            raise ConfigError(f"--folds must be at least 2, got {self.folds}")


def _balance(scan: Scan, main: np.ndarray) -> dict:
    counts = {}
    for split in _split_order([s for s, m in zip(scan.splits, main) if m]):
        mask = np.array([s == split for s in scan.splits])
        counts[split] = np.bincount(scan.labels[mask], minlength=len(scan.classes)).tolist()
    train = counts.get("train") or next(iter(counts.values()), [])
    present = [c for c in train if c > 0]
    return {"classes": list(scan.classes), "counts": counts,
            "imbalance_ratio": round(max(present) / min(present), 4) if present else None,
            "empty_classes": [c for c, n in zip(scan.classes, train) if n == 0]}


def _split_order(splits: list[str]) -> list[str]:
    """Distinct split names, train, val, test first (then --against's, in the same order)."""
    rank = {"train": 0, "val": 1, "test": 2}
    return sorted(set(splits), key=lambda s: ("/" in s, rank.get(s.rsplit("/", 1)[-1], 3), s))


def _entry(scan: Scan, i: int) -> dict:
    return {"index": int(i), "split": scan.splits[i], "name": scan.names[i], "label": scan.classes[scan.labels[i]]}


def audit_data(data: str, out: str | os.PathLike, *, against: str | None = None, options: AuditOptions | None = None) -> dict:
    """Audit DATA (and, with ``against``, its overlap with OTHER); write audit.json/html/md and PNGs to ``out``."""
    options = options or AuditOptions()
    started = time.perf_counter()
    scan = scan_dataset(data, data_dir=options.data_dir)
    n_main = len(scan)
    if n_main == 0:
        raise DataError(f"{data}: no image decodes ({len(scan.bad)} files tried; first: "
                        f"{scan.bad[0]['name'] + ' ' + scan.bad[0]['reason'] if scan.bad else 'none'})")
    if against is not None:
        tag = (Path(str(against)).name.split(".")[0] or "other") + "/"
        scan = merge(scan, scan_dataset(against, tag=tag, data_dir=options.data_dir))
    main = np.arange(len(scan)) < n_main
    scanned = time.perf_counter()

    model = None
    features = None
    if options.model is not None:
        from resnetlab.models.importers import load_any_model

        model = load_any_model(options.model, options.source_format)
        features = label_issues.model_features(model, scan.thumbs)

    dup = duplicates.find_duplicates(scan.digests, scan.thumbs, scan.splits, scan.std, max_distance=options.phash_distance,
                                     min_correlation=options.min_correlation,
                                     features=features, min_cosine=options.min_cosine)
    pairs = [{"a": _entry(scan, p.i), "b": _entry(scan, p.j), "kind": p.kind, "distance": p.distance} for p in dup.pop("pairs")]
    members = dup.pop("cluster_members")
    # Cross-split pairs are the leaks: all listed (up to LISTED_CROSS), first, and first in the gallery.
    cross = [p for p in pairs if p["a"]["split"] != p["b"]["split"]]
    within = [p for p in pairs if p["a"]["split"] == p["b"]["split"]]
    dup["pairs_listed"] = cross[:LISTED_CROSS] + within[:LISTED_WITHIN]
    dup["pairs_listed_all"] = len(cross) <= LISTED_CROSS and len(within) <= LISTED_WITHIN
    dup["pairs_with_different_labels"] = sum(p["a"]["label"] != p["b"]["label"] for p in pairs)  # a copy filed twice
    dup["largest_clusters"] = [[_entry(scan, i) for i in g] for g in members[:50]]
    gallery_pairs = cross + within

    odd = oddities.find_oddities(scan.names, scan.splits, scan.sizes, scan.std, scan.gray, scan.bad)
    balance = _balance(scan, main)

    labels_out: dict = {"skipped": "label-error search not requested (--no-label-errors)"}
    label_count = int(main.sum())
    if options.label_errors:
        idx = np.flatnonzero(main)
        found = label_issues.find_label_issues(scan.thumbs[idx], scan.labels[idx], scan.classes,
                                               features=None if features is None else features[idx],
                                               feature_name=f"penultimate features of {options.model}",
                                               folds=options.folds, seed=options.seed)
        if "ranked" in found:
            ranked = found.pop("ranked")
            sugg, conf, margin = found.pop("suggested"), found.pop("self_confidence"), found.pop("margin")
            found["suspects"] = [{**_entry(scan, idx[r]), "given": scan.classes[scan.labels[idx[r]]], "suggested": scan.classes[sugg[r]],
                                  "self_confidence": round(float(conf[r]), 4), "margin": round(float(margin[r]), 4)}
                                 for r in ranked[:label_issues.LISTED]]
            if model is not None:
                found["note"] = ("The features come from MODEL; if MODEL was trained on these images the probabilities are "
                                 "not out-of-sample for it, and label errors it memorised are hidden.")
        labels_out = found

    pngs = {"balance.png": audit_report.balance_png(balance)}
    if gallery_pairs:
        pngs["duplicates.png"] = audit_report.pairs_png(gallery_pairs, scan.thumbs)
    if labels_out.get("suspects"):
        pngs["label_suspects.png"] = audit_report.suspects_png(labels_out["suspects"], scan.thumbs)

    splits_count = {split: scan.splits.count(split) for split in _split_order(scan.splits)}
    audit = {
        "data": str(data), "against": None if against is None else str(against),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["resnetlab", *sys.argv[1:]]) if Path(sys.argv[0]).name in ("resnetlab", "__main__.py") else "",
        "images": len(scan), "images_per_split": splits_count, "label_images": label_count,
        "model": options.model,
        "duplicates": dup, "balance": balance, "oddities": odd, "label_issues": labels_out,
        "timing_s": {"scan": round(scanned - started, 2), "total": round(time.perf_counter() - started, 2)},
    }
    paths = audit_report.write_report(audit, pngs, Path(out))
    audit["timing_s"]["total"] = round(time.perf_counter() - started, 2)
    audit["paths"] = {k: str(v) for k, v in paths.items()}
    return audit
