"""``resnetlab data audit``: planted duplicates within and across splits/datasets, class balance, odd
images, confident-learning label errors, the CLI end to end and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnetlab.audit import AuditOptions, audit_data
from resnetlab.audit.duplicates import correlations, cosine_pairs, hamming_pairs, phash, shifted_phashes
from resnetlab.audit.label_issues import confident_learning, find_label_issues
from resnetlab.cli import main


def smooth_image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A picture-like image: a random 5x5 colour grid enlarged bicubically, plus mild noise (unlike pure
    noise, it has the low-frequency structure that photos and a perceptual hash have)."""
    grid = Image.fromarray(rng.integers(20, 210, (5, 5, 3), dtype=np.uint8))  # room to brighten without clipping
    base = np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
    return np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)


def scene(rng: np.random.Generator) -> np.ndarray:
    """A 33x33 picture: its top-left 32x32 is the image, its bottom-right 32x32 the same scene one pixel on."""
    return smooth_image(rng, 33)


def shifted(view: np.ndarray) -> np.ndarray:
    return view[1:, 1:]


def unshifted(view: np.ndarray) -> np.ndarray:
    return view[:32, :32]


def brighter(image: np.ndarray) -> np.ndarray:
    return np.clip(image.astype(np.int16) + 30, 0, 255).astype(np.uint8)


def save(image: np.ndarray, path: Path, quality: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if quality is None:
        Image.fromarray(image).save(path)
    else:
        Image.fromarray(image).save(path, quality=quality)


def planted_dataset(root: Path, seed: int = 0) -> dict:
    """train/ of 4 classes x 10 distinct images (JPEG q=95), test/ with 9 planted copies of train images
    (re-encoded at q=60, shifted 1 px, brighter) and 6 unrelated images; in train one exact copy (same
    pixels as PNG, other file bytes) and one re-encoded copy. Returns the expected pairs by file name."""
    rng = np.random.default_rng(seed)
    originals, scenes = {}, {}
    for c in range(4):
        for i in range(10):
            name = f"train/c{c}/{i:02d}.jpg"
            scenes[name] = scene(rng)
            save(unshifted(scenes[name]), root / name, quality=95)
            originals[name] = np.asarray(Image.open(root / name).convert("RGB"))  # the pixels as decoded
    names = sorted(originals)
    cross = set()
    for k, how in enumerate(["q60", "shift", "bright"] * 3):
        source = names[k * 4 + 1]
        target = f"test/{source.split('/')[1]}/{how}{k}.jpg"
        copy = {"q60": originals[source], "shift": shifted(scenes[source]), "bright": brighter(originals[source])}[how]
        save(copy, root / target, quality=60 if how == "q60" else 95)
        cross.add((source, target))
    for k in range(6):
        save(smooth_image(rng), root / f"test/c{k % 4}/new{k}.jpg", quality=95)
    save(originals[names[0]], root / "train/c0/exact_copy.png")  # PNG: other bytes, identical pixels
    save(originals[names[2]], root / "train/c0/q50_copy.jpg", quality=50)
    pairs = {"cross": cross, "exact": {(names[0], "train/c0/exact_copy.png")}, "near": {(names[2], "train/c0/q50_copy.jpg")}}
    return {kind: {tuple(sorted(p)) for p in found} for kind, found in pairs.items()}


def pair_names(pairs: list[dict], kinds=("exact", "phash", "features")) -> set[tuple[str, str]]:
    return {tuple(sorted((p["a"]["name"], p["b"]["name"]))) for p in pairs if p["kind"] in kinds}


def test_phash_pairs_match_a_brute_force_reference():
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64)
    hashes[50] = hashes[7] ^ np.uint64(0b1011)  # 3 bits from 7
    i, j, d = hamming_pairs(hashes, 20)
    bits = np.unpackbits(hashes.view(np.uint8).reshape(-1, 8), axis=1)
    dist = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    ref = {(a, b) for a, b in zip(*np.nonzero(dist <= 20)) if a < b}
    assert {(a, b) for a, b in zip(i.tolist(), j.tolist())} == ref
    assert all(dist[a, b] == dd for a, b, dd in zip(i, j, d))
    assert (7, 50) in ref


def test_cosine_pairs_match_a_brute_force_reference():
    rng = np.random.default_rng(11)
    features = rng.normal(size=(120, 6)).astype(np.float32)
    features[90] = 3 * features[4] + 0.01  # same direction: cosine ~1
    i, j, sim = cosine_pairs(features, 0.9)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    ref = {(a, b) for a, b in zip(*np.nonzero(unit @ unit.T >= 0.9)) if a < b}
    assert {(a, b) for a, b in zip(i.tolist(), j.tolist())} == ref and (4, 90) in ref
    assert np.allclose(sim, (unit[i] * unit[j]).sum(1), atol=1e-5)


def test_phash_is_robust_to_small_edits_and_differs_between_images():
    rng = np.random.default_rng(2)
    view, b = scene(rng), smooth_image(rng)
    a = unshifted(view)
    probes = shifted_phashes(np.stack([a]))[:, 0]  # (9,) hashes of a moved by up to 1 px
    h = phash(np.stack([shifted(view), brighter(a), b]))
    distance = lambda x, y: int(np.bitwise_count(x ^ y))  # noqa: E731
    assert min(distance(p, h[0]) for p in probes) <= 4  # the camera moved by one pixel
    assert distance(probes[0], h[1]) <= 4
    assert distance(probes[0], h[2]) > 12 and min(distance(p, h[2]) for p in probes) > 12


def test_correlation_confirms_copies_and_matches_numpy():
    rng = np.random.default_rng(12)
    view = scene(rng)
    a, b = unshifted(view), smooth_image(rng)
    thumbs = np.stack([a, shifted(view), brighter(a), b])
    r = correlations(thumbs, np.array([0, 0, 0]), np.array([1, 2, 3]))
    assert r[0] > 0.95 and r[1] > 0.99 and r[2] < 0.8
    grey = thumbs.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    plain = correlations(thumbs, np.array([0]), np.array([3]), pixels=0)  # no moves: Pearson's r
    assert plain[0] == pytest.approx(np.corrcoef(grey[0].ravel(), grey[3].ravel())[0, 1], abs=1e-4)


def test_planted_duplicates_found_within_and_across_splits(tmp_path):
    expected = planted_dataset(tmp_path / "ds")
    audit = audit_data(str(tmp_path / "ds"), tmp_path / "out", options=AuditOptions(label_errors=False))
    dup = audit["duplicates"]
    pairs = dup["pairs_listed"]
    cross = {p for p in pair_names([q for q in pairs if q["a"]["split"] != q["b"]["split"]])}
    # precision and recall 1 on the constructed case: every planted copy, and nothing unrelated
    assert cross == expected["cross"]
    within = pair_names([q for q in pairs if q["a"]["split"] == q["b"]["split"]])
    assert within == expected["exact"] | expected["near"]
    assert pair_names(pairs, ("exact",)) == expected["exact"]
    assert dup["with_copy_in_other_split"] == {"test": 9, "train": 9}
    assert dup["clusters"] == 11 and dup["thresholds"]["phash_max_hamming"] == 4


def test_against_other_dataset_finds_planted_copies_only(tmp_path):
    rng = np.random.default_rng(3)
    scenes = {f"c{c}/{i}.png": scene(rng) for c in range(2) for i in range(15)}
    ours = {name: unshifted(view) for name, view in scenes.items()}
    for name, image in ours.items():
        save(image, tmp_path / "ours" / name)
    planted = {"c0/0.png": "c1/copy_q70.jpg", "c0/3.png": "c0/copy_shift.png", "c1/5.png": "c1/copy_bright.png"}
    save(ours["c0/0.png"], tmp_path / "other" / planted["c0/0.png"], quality=70)
    save(shifted(scenes["c0/3.png"]), tmp_path / "other" / planted["c0/3.png"])
    save(brighter(ours["c1/5.png"]), tmp_path / "other" / planted["c1/5.png"])
    for k in range(20):
        save(smooth_image(rng), tmp_path / "other" / f"c{k % 2}/new{k}.png")
    audit = audit_data(str(tmp_path / "ours"), tmp_path / "out", against=str(tmp_path / "other"),
                       options=AuditOptions(label_errors=False))
    found = {(p["a"]["name"], p["b"]["name"]) for p in audit["duplicates"]["pairs_listed"]}
    assert found == {(ours_name, "other/" + copy) for ours_name, copy in planted.items()}
    assert audit["duplicates"]["with_copy_in_other_split"] == {"other/train": 3, "train": 3}
    # a copy filed under another class shows up with both labels
    leak = next(p for p in audit["duplicates"]["pairs_listed"] if p["b"]["name"] == "other/c1/copy_q70.jpg")
    assert (leak["a"]["label"], leak["b"]["label"]) == ("c0", "c1")
    assert audit["duplicates"]["pairs_with_different_labels"] == 1


def test_class_balance_and_odd_images(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "ds"
    for c, count in (("big", 12), ("small", 4)):
        for i in range(count):
            save(smooth_image(rng), root / c / f"{i}.png")
    save(np.full((32, 32, 3), 127, np.uint8), root / "big" / "constant.png")
    save(smooth_image(rng, 8), root / "big" / "tiny.png")
    save(np.asarray(Image.fromarray(smooth_image(rng)).resize((160, 16))), root / "small" / "wide.png")
    gray = smooth_image(rng)[..., :1].repeat(3, axis=2)
    save(gray, root / "small" / "gray.png")
    (root / "small" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    audit = audit_data(str(root), tmp_path / "out", options=AuditOptions(label_errors=False))
    assert audit["balance"]["counts"] == {"train": [14, 6]}  # 12 + constant + tiny; 4 + wide + gray (broken: not an image)
    assert audit["balance"]["imbalance_ratio"] == pytest.approx(14 / 6, abs=1e-4)
    odd = audit["oddities"]
    names = {k: [x["name"] for x in odd[k]["items"]] for k in ("constant", "tiny", "extreme_aspect", "grayscale_in_rgb", "undecodable")}
    assert names["constant"] == ["big/constant.png"]
    assert names["tiny"] == ["big/tiny.png"]
    assert names["extreme_aspect"] == ["small/wide.png"]
    assert set(names["grayscale_in_rgb"]) == {"small/gray.png", "big/constant.png"}
    assert names["undecodable"] == ["small/broken.jpg"] and "corrupt" in odd["undecodable"]["items"][0]["reason"]
    assert audit["images"] == 20  # every decodable file is audited; the broken one is named, not fatal


def squares_dataset(n_per_class: int = 50, classes: int = 4, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Separable tiny images: a class-coloured square at a random place on a noisy background."""
    rng = np.random.default_rng(seed)
    colours = np.array([[230, 40, 40], [40, 200, 40], [40, 40, 230], [220, 220, 40]], np.uint8)[:classes]
    images, labels = [], []
    for c in range(classes):
        for _ in range(n_per_class):
            image = rng.integers(0, 90, (16, 16, 3), dtype=np.uint8)
            y, x = rng.integers(0, 8, 2)
            image[y:y + 8, x:x + 8] = colours[c]
            images.append(image)
            labels.append(c)
    return np.stack(images), np.array(labels)


def test_flipped_labels_rank_first():
    images, labels = squares_dataset()
    rng = np.random.default_rng(6)
    flipped = rng.choice(len(labels), 10, replace=False)  # 5% of 200
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, 4, 10)) % 4
    found = find_label_issues(images, noisy, ["r", "g", "b", "y"], folds=5)
    top = found["ranked"][:10]
    precision = np.isin(top, flipped).mean()
    assert precision >= 0.8, (precision, top, flipped)
    # the suggestion is the true class for the flipped ones it found
    hits = top[np.isin(top, flipped)]
    assert (found["suggested"][hits] == labels[hits]).mean() >= 0.8
    # a clean copy of the same data is not accused of much
    clean = find_label_issues(images, labels, ["r", "g", "b", "y"], folds=5)
    assert clean["count"] <= 2


def test_confident_learning_against_hand_worked_example():
    # 6 images, 2 classes. Self-confidence of class 0: (.9, .8, .1) -> t0 = .6; of class 1: (.7, .8, .6) -> t1 = .7
    probs = np.array([[.9, .1], [.8, .2], [.1, .9], [.3, .7], [.2, .8], [.4, .6]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    cl = confident_learning(labels, probs)
    assert np.allclose(cl["thresholds"], [0.6, 0.7])
    # image 2 (labelled 0, p1 = .9 >= .7) is the one issue; image 5 (p1 = .6 < .7, p0 = .4 < .6) is not confident
    assert cl["ranked"].tolist() == [2]
    assert cl["confident_joint"].tolist() == [[2, 1], [0, 2]]


def test_agrees_with_cleanlab_when_installed():
    cleanlab_filter = pytest.importorskip("cleanlab.filter")
    images, labels = squares_dataset(seed=8)
    rng = np.random.default_rng(9)
    flipped = rng.choice(len(labels), 10, replace=False)
    labels[flipped] = (labels[flipped] + 1) % 4
    from resnetlab.audit.label_issues import cross_validated_probs, pixel_features

    probs, _ = cross_validated_probs(pixel_features(images), labels, 4)
    ours = set(confident_learning(labels, probs)["ranked"].tolist())
    theirs = set(np.flatnonzero(cleanlab_filter.find_label_issues(labels, probs, filter_by="confident_learning")).tolist())
    assert len(ours ^ theirs) <= max(1, len(ours | theirs) // 10)


def test_cli_end_to_end(tmp_path, capsys):
    planted_dataset(tmp_path / "ds")
    out = tmp_path / "audit"
    assert main(["data", "audit", str(tmp_path / "ds"), "--out", str(out), "--folds", "3"]) == 0
    printed = capsys.readouterr().out
    assert "9 images have a copy in another split" in printed and "Hamming <= 4" in printed
    audit = json.loads((out / "audit.json").read_text())
    assert audit["duplicates"]["pairs_by_split"]["test vs train"]["exact"] + audit["duplicates"]["pairs_by_split"]["test vs train"]["phash"] == 9
    assert "count" in audit["label_issues"] and 0 <= audit["label_issues"]["cv_accuracy"] <= 1
    page = (out / "audit.html").read_text()
    for section in ('id="duplicates"', 'id="balance"', 'id="oddities"', 'id="labels"', "data:image/png;base64,"):
        assert section in page
    assert "<code>audit.json</code>" in page and 'src="http' not in page  # self-contained: figures are embedded
    assert {"balance.png", "duplicates.png", "audit.md"} <= {p.name for p in out.iterdir()}


@pytest.mark.parametrize("args, words", [
    (["{tmp}/missing"], "no such file or folder"),
    (["{tmp}/file.txt"], "not a folder"),
    (["{tmp}", "--phash-distance", "99"], "--phash-distance"),
    (["{tmp}/broken"], "no image decodes"),
])
def test_cli_bad_input_is_one_line_error(tmp_path, capsys, args, words):
    (tmp_path / "file.txt").write_text("hello")
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "x.jpg").write_bytes(b"not a picture")
    code = main(["data", "audit", *(a.format(tmp=tmp_path) for a in args), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and words in err, err


def test_model_features_feed_duplicates_and_label_check(tmp_path):
    import torch

    from resnetlab.models import create_model
    from resnetlab.models.files import save_model_file

    expected = planted_dataset(tmp_path / "ds")
    torch.manual_seed(0)
    model = create_model("cnn_baseline", num_classes=4)
    path = save_model_file(model, tmp_path / "m.safetensors")
    audit = audit_data(str(tmp_path / "ds"), tmp_path / "out", options=AuditOptions(model=str(path), min_cosine=0.99999, folds=3))
    dup, lab = audit["duplicates"], audit["label_issues"]
    assert dup["thresholds"]["feature_min_cosine"] == 0.99999
    # identical pixels give identical features: the exact pair is found by both (listed once, as exact)
    assert expected["exact"] <= pair_names(dup["pairs_listed"], ("exact",))
    assert "penultimate features of" in lab["classifier"] and "not out-of-sample" in lab["note"]
