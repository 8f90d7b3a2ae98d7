"""Odd images: constant, tiny, extreme aspect ratio, grey stored as RGB, and files that do not decode.

Thresholds are module constants, written into audit.json beside the lists they produced.
"""

from __future__ import annotations

import numpy as np

CONSTANT_MAX_STD = 2.0  # pixel std (0..255) below which an image is flat: a blank frame, a placeholder
TINY_MIN_SIDE = 16  # pixels; a side below this carries little for a classifier (CIFAR is 32)
MAX_ASPECT = 4.0  # long side / short side beyond which centre-cropping to a square loses most of it
LISTED = 200  # names listed per kind in audit.json (the counts are always complete)


def find_oddities(names: list[str], splits: list[str], sizes: np.ndarray, std: np.ndarray, gray: np.ndarray,
                  bad: list[dict]) -> dict:
    """Counts and (up to ``LISTED``) names of each kind of odd image."""
    heights, widths = sizes[:, 0], sizes[:, 1]
    aspect = np.maximum(heights, widths) / np.maximum(np.minimum(heights, widths), 1)
    kinds = {
        "constant": (std < CONSTANT_MAX_STD, lambda i: f"std {std[i]:.2f}"),
        "tiny": (np.minimum(heights, widths) < TINY_MIN_SIDE, lambda i: f"{widths[i]}x{heights[i]}"),
        "extreme_aspect": (aspect > MAX_ASPECT, lambda i: f"{widths[i]}x{heights[i]} ({aspect[i]:.1f}:1)"),
        "grayscale_in_rgb": (gray, lambda i: "R = G = B"),
    }
    out: dict = {"thresholds": {"constant_max_std": CONSTANT_MAX_STD, "tiny_min_side": TINY_MIN_SIDE,
                                "max_aspect": MAX_ASPECT}}
    for kind, (mask, why) in kinds.items():
        hits = np.flatnonzero(mask)
        out[kind] = {"count": int(len(hits)),
                     "items": [{"index": int(i), "split": splits[i], "name": names[i], "why": why(i)} for i in hits[:LISTED]]}
    out["undecodable"] = {"count": len(bad), "items": bad[:LISTED]}
    return out
