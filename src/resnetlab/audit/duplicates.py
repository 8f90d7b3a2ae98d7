"""Exact and near-duplicate images: pixel digests, a 64-bit DCT perceptual hash, optionally a model's
features, grouped into clusters.

- exact: identical decoded pixels (same digest of pixels and shape), whatever the file bytes;
- near: perceptual hashes within ``PHASH_MAX_DISTANCE`` bits (Hamming), or, with a model, penultimate
  features with cosine similarity of at least ``cosine`` (catches shifted or re-coloured copies a hash
  may miss).

All pairs are compared, vectorised: a block of hashes XOR all later hashes, popcount per uint64
(``np.bitwise_count``), so 50,000 images (1.25e9 pairs) take seconds on one core.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Hamming distance (of 64 bits) at or below which two pHashes are near-duplicates. Every hash has
# exactly 32 bits set (the median split of 63 AC terms, plus the DC bit), so distances are even.
# Unrelated images differ in ~32 bits; a 1-px shift, JPEG re-encoding or a brightness change of a
# 32x32 image move a few. On CIFAR-10 train, 24 random pairs at distance 4 were all the same picture
# (recoloured, re-cropped); at 6, 4 of 24 were different pictures (plane vs bird on blue sky), so 4.
PHASH_MAX_DISTANCE = 4
# Copies moved by up to this many pixels are matched by hashing each image at every such shift: a
# 1-px shift of a 32x32 CIFAR image moves its pHash by 12 bits (median over 2,000 images), far
# beyond any useful threshold, while brightness and JPEG re-encoding (q=60) move it by 0-2.
SHIFT_PIXELS = 1
# A pHash match is confirmed when the grey thumbnails also correlate (Pearson, best over the same
# shifts) at least this much. On CIFAR-10 train, pHash <= 4 alone paired small dark objects on plain
# sky (16 pairs across classes, airplane|bird, all below 0.79; most same-class pairs below 0.8 were
# different planes too), while planted copies stay above it: JPEG q=60 >= 0.98, brightness +30
# >= 0.99, 1-px shift 1.0, a 31-px re-crop >= 0.87 (1st percentile of 300 each).
MIN_CORRELATION = 0.8
# Cosine similarity of (centred) penultimate features at or above which two images are near-duplicates,
# also confirmed by MIN_CORRELATION. A classifier's features describe the class more than the picture:
# with akamaster's ResNet-32 on CIFAR-10 train, 0.97 gave 5,933 pairs and even at >= 0.985 most sampled
# pairs were different ships on a horizon (BENCHMARKS.md, data audit), hence the strict default.
FEATURE_MIN_COSINE = 0.99
# Images flatter than this (pixel std, 0..255) have no structure for a hash to describe; they are
# reported as constant images, not as duplicates of every other flat image.
MIN_STD_FOR_HASH = 2.0
_BLOCK_ELEMENTS = 4_000_000  # pairs per block: 32 MB of uint64, small next to the images


def phash(thumbs: np.ndarray) -> np.ndarray:
    """64-bit DCT perceptual hashes of uint8 (N, 32, 32, 3) images, as uint64 (N,).

    Zauner (2010) pHash: grey 32x32 -> 2-D DCT-II -> the 8x8 lowest frequencies -> one bit per
    coefficient, set when above the median of the 63 AC coefficients (the DC term, the mean
    brightness, is left out of the median so a brightness change does not move it).
    """
    import scipy.fft  # here, not at the top: every CLI start imports this module for the parser's defaults

    import scipy.fft  # here, not at the top: the CLI imports this module's thresholds for --help defaults

    grey = thumbs.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # (N, 32, 32)
    low = scipy.fft.dctn(grey, type=2, axes=(1, 2), norm="ortho")[:, :8, :8].reshape(len(thumbs), 64)
    median = np.median(low[:, 1:], axis=1, keepdims=True)
    bits = low > median
    return np.packbits(bits, axis=1).view(">u8").reshape(-1).astype(np.uint64)


def shift(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """uint8 (N, H, W, 3) images moved by (dy, dx) pixels, the uncovered edge repeating the border."""
    p = max(abs(dy), abs(dx))
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), mode="edge")
    h, w = images.shape[1:3]
    return padded[:, p - dy:p - dy + h, p - dx:p - dx + w]


def shifted_phashes(thumbs: np.ndarray, pixels: int = SHIFT_PIXELS) -> np.ndarray:
    """(S, N) pHashes of every image moved by each (dy, dx) in [-pixels, pixels]^2, the unmoved one first."""
    moves = [(0, 0)] + [(dy, dx) for dy in range(-pixels, pixels + 1) for dx in range(-pixels, pixels + 1) if (dy, dx) != (0, 0)]
    return np.stack([phash(shift(thumbs, dy, dx)) for dy, dx in moves])


def hamming_pairs(hashes: np.ndarray, max_distance: int, keep: np.ndarray | None = None,
                  probes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) with Hamming distance <= ``max_distance``: (i, j, distance) arrays.

    ``keep`` (bool per image) leaves images out of the comparison (flat images). ``probes`` (S, N):
    more hashes of each image (e.g. :func:`shifted_phashes`); the distance of (i, j) is then the least
    over s of d(probes[s, i], hashes[j]). With a symmetric set of shifts that covers j being a moved i
    and i a moved j.
    """
    index = np.arange(len(hashes)) if keep is None else np.flatnonzero(keep)
    h = hashes[index]
    p = h[None] if probes is None else probes[:, index]
    n = len(h)
    block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    found_i, found_j, found_d = [], [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        d = np.bitwise_count(p[0, start:stop, None] ^ h[None, start:])  # (b, n - start) uint8
        for probe in p[1:]:
            np.minimum(d, np.bitwise_count(probe[start:stop, None] ^ h[None, start:]), out=d)
        rows, cols = np.nonzero(d <= max_distance)
        upper = cols > rows  # cols are offset by start: col c is image start + c; keep j > i only
        rows, cols = rows[upper], cols[upper]
        found_i.append(index[start + rows])
        found_j.append(index[start + cols])
        found_d.append(d[rows, cols].astype(np.float32))
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)


def cosine_pairs(features: np.ndarray, min_cosine: float, keep: np.ndarray | None = None,
                 center: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) whose features have cosine similarity >= ``min_cosine``: (i, j, similarity);
    with ``center`` the features' mean is subtracted first."""
    index = np.arange(len(features)) if keep is None else np.flatnonzero(keep)
    f = features[index].astype(np.float32)
    if center:  # ReLU features are all positive: uncentred, any two images of a class look alike
        f -= f.mean(axis=0, keepdims=True)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    n = len(f)
    block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    found_i, found_j, found_s = [], [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        s = f[start:stop] @ f[start:].T  # (b, n - start)
        rows, cols = np.nonzero(s >= min_cosine)
        upper = cols > rows
        rows, cols = rows[upper], cols[upper]
        found_i.append(index[start + rows])
        found_j.append(index[start + cols])
        found_s.append(s[rows, cols])
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)


def correlations(thumbs: np.ndarray, i: np.ndarray, j: np.ndarray, pixels: int = SHIFT_PIXELS, chunk: int = 8192) -> np.ndarray:
    """Pearson correlation of the grey thumbnails of each pair (i, j), the best over moves of i by up
    to ``pixels``; the border ``pixels`` wide is left out (it is made up by the move)."""
    grey = thumbs.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # (N, H, W)
    inner = (slice(None), slice(pixels, grey.shape[1] - pixels), slice(pixels, grey.shape[2] - pixels))
    out = np.full(len(i), -1.0, dtype=np.float32)
    for start in range(0, len(i), chunk):
        a, b = grey[i[start:start + chunk]], grey[j[start:start + chunk]]
        b = b[inner].reshape(len(b), -1)
        b = b - b.mean(axis=1, keepdims=True)
        for dy in range(-pixels, pixels + 1):
            for dx in range(-pixels, pixels + 1):
                moved = shift(a[..., None], dy, dx)[..., 0][inner].reshape(len(a), -1)
                moved = moved - moved.mean(axis=1, keepdims=True)
                r = (moved * b).sum(1) / np.sqrt((moved * moved).sum(1) * (b * b).sum(1) + 1e-6)
                np.maximum(out[start:start + chunk], r, out=out[start:start + chunk])
    return out


def exact_groups(digests: list[bytes]) -> list[list[int]]:
    """Indices of images with identical pixels, one list per group of two or more."""
    groups: dict[bytes, list[int]] = {}
    for i, d in enumerate(digests):
        groups.setdefault(d, []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def clusters(n: int, pairs_i: np.ndarray, pairs_j: np.ndarray) -> list[list[int]]:
    """Connected components (union-find, path halving) of the pair graph; only those of size >= 2."""
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(pairs_i.tolist(), pairs_j.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for x in np.unique(np.concatenate([pairs_i, pairs_j])).tolist():
        groups.setdefault(find(x), []).append(x)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


@dataclass
class Pair:
    i: int
    j: int
    kind: str  # "exact", "phash" or "features"
    distance: float  # Hamming bits (exact: 0) or cosine similarity (features)


def find_duplicates(digests: list[bytes], thumbs: np.ndarray, splits: list[str], std: np.ndarray, *,
                    max_distance: int = PHASH_MAX_DISTANCE, min_correlation: float = MIN_CORRELATION,
                    features: np.ndarray | None = None,
                    min_cosine: float = FEATURE_MIN_COSINE) -> dict:
    """Every duplicate pair and cluster, counted within and across splits; plain JSON-able data
    (``pairs`` keeps Pair objects for the gallery; callers drop it before writing JSON)."""
    n = len(digests)
    pairs: dict[tuple[int, int], Pair] = {}
    for group in exact_groups(digests):
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                pairs[(group[a], group[b])] = Pair(group[a], group[b], "exact", 0.0)
    structured = std >= MIN_STD_FOR_HASH
    probes = shifted_phashes(thumbs) if n else np.zeros((1, 0), np.uint64)
    hi, hj, hd = hamming_pairs(probes[0], max_distance, structured, probes)
    r = correlations(thumbs, hi, hj)
    confirmed = r >= min_correlation
    for i, j, d in zip(hi[confirmed].tolist(), hj[confirmed].tolist(), hd[confirmed].tolist()):
        pairs.setdefault((i, j), Pair(i, j, "phash", d))
    rejected_features = 0
    if features is not None:
        fi, fj, fs = cosine_pairs(features, min_cosine, structured, center=True)
        ok = correlations(thumbs, fi, fj) >= min_correlation
        rejected_features = int((~ok).sum())
        for i, j, s in zip(fi[ok].tolist(), fj[ok].tolist(), fs[ok].tolist()):
            pairs.setdefault((i, j), Pair(i, j, "features", round(s, 4)))
    rank = {"exact": 0, "phash": 1, "features": 2}  # closest first within each kind
    ordered = sorted(pairs.values(), key=lambda p: (rank[p.kind], p.distance if p.kind != "features" else -p.distance, p.i, p.j))
    pi = np.array([p.i for p in ordered], dtype=np.int64)
    pj = np.array([p.j for p in ordered], dtype=np.int64)
    groups = clusters(n, pi, pj)

    counts: dict[str, dict] = {}
    for p in ordered:
        key = splits[p.i] if splits[p.i] == splits[p.j] else " vs ".join(sorted((splits[p.i], splits[p.j])))
        c = counts.setdefault(key, {"exact": 0, "phash": 0, "features": 0})
        c[p.kind] += 1
    # Barz & Denzler's measure: images of a split that have a (near) copy in another split
    with_copy_elsewhere: dict[str, set[int]] = {}
    for p in ordered:
        if splits[p.i] != splits[p.j]:
            with_copy_elsewhere.setdefault(splits[p.i], set()).add(p.i)
            with_copy_elsewhere.setdefault(splits[p.j], set()).add(p.j)
    in_clusters = {i for g in groups for i in g}
    exact = [g for g in exact_groups(digests)]
    return {
        "thresholds": {"phash_max_hamming": max_distance, "phash_bits": 64, "phash_shift_pixels": SHIFT_PIXELS,
                       "phash_min_correlation": min_correlation,
                       "min_std_for_hash": MIN_STD_FOR_HASH,
                       "feature_min_cosine": min_cosine if features is not None else None,
                       "features_centred": features is not None},
        "exact_groups": len(exact),
        "exact_redundant_images": sum(len(g) - 1 for g in exact),
        "pairs_total": len(ordered),
        "phash_rejected_by_correlation": int((~confirmed).sum()),
        "features_rejected_by_correlation": rejected_features,
        "pairs_by_kind": {k: sum(p.kind == k for p in ordered) for k in ("exact", "phash", "features")},
        "pairs_by_split": counts,
        "clusters": len(groups),
        "images_in_clusters": len(in_clusters),
        "redundant_images": len(in_clusters) - len(groups),  # images to drop to keep one of each cluster
        "with_copy_in_other_split": {k: len(v) for k, v in sorted(with_copy_elsewhere.items())},
        "cluster_members": groups,
        "pairs": ordered,
    }
