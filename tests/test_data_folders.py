"""Image folders and archives of them: layouts, class order, modes to RGB, resizing, the cache."""

from __future__ import annotations

import logging
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import class_folder
from PIL import Image

from resnetlab.data import decode, load_splits
from resnetlab.data.folders import load_image_folder
from resnetlab.errors import DataError


def _save(path: Path, array: np.ndarray, mode: str | None = None, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(path, format=fmt)


def _make_folder(root: Path, classes=("cat", "dog", "bird"), per_class=5, size=8) -> dict:
    """PNG class folders with a distinct solid colour per image; returns {relpath: array}."""
    return class_folder(root, classes, per_class, size, fill="solid")


def test_class_folders_sorted_and_val_carved(tmp_path):
    made = _make_folder(tmp_path / "ds")
    splits = load_splits(tmp_path / "ds", seed=0)
    assert splits.classes == ["bird", "cat", "dog"]
    assert len(splits.train) + len(splits.val) == 15
    assert len(splits.val) == 3  # 10% rounds to 2 but at least one per class
    assert sorted(splits.val.labels.tolist()) == [0, 1, 2]
    assert splits.test is None
    for part in (splits.train, splits.val):
        for image, label, rel in zip(part.images, part.labels, part.paths):
            assert rel.split("/")[0] == splits.classes[label]
            np.testing.assert_array_equal(image.numpy(), made[rel])


def test_explicit_split_folders(tmp_path):
    root = tmp_path / "ds"
    _make_folder(root / "train", per_class=4)
    _make_folder(root / "val", per_class=2)
    _make_folder(root / "test", classes=("cat", "dog"), per_class=1)
    splits = load_splits(root, val_size=7)  # ignored: the data has its own val/
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 6, 2)
    assert splits.test.classes == ["bird", "cat", "dog"]
    assert sorted(splits.test.labels.tolist()) == [1, 2]
    assert splits.val.mean == splits.train.mean


def test_val_class_missing_from_train_is_an_error(tmp_path):
    root = tmp_path / "ds"
    _make_folder(root / "train", per_class=2)
    _make_folder(root / "val", classes=("zebra",), per_class=1)
    with pytest.raises(DataError, match="val/zebra/.*not present in train"):
        load_splits(root)


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "tgz", "zip", "zip-top", "tar-train-top"])
def test_archives_match_the_folder(tmp_path, kind):
    root = tmp_path / "ds"
    made = _make_folder(root)
    reference = load_image_folder(root)["train"]
    archive = tmp_path / f"ds.{kind.split('-')[0]}"
    if kind.startswith("zip"):
        with zipfile.ZipFile(archive, "w") as zf:
            for rel in made:
                zf.write(root / rel, ("mydata/" if kind == "zip-top" else "") + rel)
    else:
        mode = "w:gz" if kind in ("tar.gz", "tgz") else "w"
        with tarfile.open(archive, mode) as tar:
            tar.add(root, arcname="train" if kind == "tar-train-top" else ".")
    splits = load_image_folder(archive)
    assert list(splits) == ["train"]
    got = splits["train"]
    assert got.classes == reference.classes
    assert got.labels.equal(reference.labels)
    assert got.images.equal(reference.images)


def test_second_load_never_decodes(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    _make_folder(root)
    first = load_image_folder(root, data_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "decoded").glob("*.npz"))

    def boom(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(decode, "decode_bytes", boom)
    second = load_image_folder(root, data_dir=tmp_path / "cache")
    assert second["train"].images.equal(first["train"].images)
    assert second["train"].paths == first["train"].paths
    # new content -> new key -> decoded again
    _save(root / "cat" / "0.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(AssertionError, match="decoded again"):
        load_image_folder(root, data_dir=tmp_path / "cache")
    # other decode settings -> other key
    with pytest.raises(AssertionError, match="decoded again"):
        load_image_folder(root, data_dir=tmp_path / "cache", image_size=4)


def test_mixed_sizes_need_image_size(tmp_path):
    root = tmp_path / "ds"
    _make_folder(root, size=8)
    _save(root / "cat" / "big.png", np.zeros((12, 20, 3), np.uint8))
    with pytest.raises(DataError, match="--image-size") as info:
        load_image_folder(root)
    assert "cat/big.png is 20x12" in str(info.value)
    resized = load_image_folder(root, image_size=6)["train"]
    assert resized.image_size == (6, 6)


def test_resize_keeps_aspect_and_centre_crops(tmp_path):
    array = np.zeros((10, 30, 3), np.uint8)
    array[:, 10:20] = 255  # white centre third, black sides
    _save(tmp_path / "ds" / "a" / "x.png", array)
    out = load_image_folder(tmp_path / "ds", image_size=10)["train"].images[0].numpy()
    assert out.shape == (10, 10, 3)
    assert out[:, 2:8].min() > 240  # the centre 10x10 window is the white band


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("L", (90, 90, 90)),
        ("RGBA", (10, 20, 30)),  # alpha dropped, colour kept
        ("LA", (90, 90, 90)),
        ("P", (10, 20, 30)),
        ("CMYK", None),
        ("1", (255, 255, 255)),
        ("I;16", (255, 255, 255)),
        ("I", (128, 128, 128)),
    ],
)
def test_any_mode_becomes_rgb(tmp_path, mode, expected):
    root = tmp_path / "ds"
    path = root / "a" / "img.png"
    path.parent.mkdir(parents=True)
    rgb = np.full((4, 4, 3), (10, 20, 30), np.uint8)
    if mode == "RGBA":
        Image.fromarray(np.dstack([rgb, np.full((4, 4), 7, np.uint8)])).save(path)
    elif mode in ("L", "LA", "1"):
        value = 255 if mode == "1" else 90
        Image.fromarray(np.full((4, 4), value, np.uint8)).convert(mode).save(path)
    elif mode == "P":
        Image.fromarray(rgb).quantize(4).save(path)
    elif mode == "CMYK":
        path = path.with_suffix(".jpg")
        Image.fromarray(rgb).convert("CMYK").save(path, quality=95)
    elif mode == "I;16":
        Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(path)  # 16-bit PNG
    elif mode == "I":
        Image.fromarray(np.full((4, 4), 32896, np.int32), mode="I").save(path.with_suffix(".tif"))
        path = path.with_suffix(".tif")
    image = load_image_folder(root)["train"].images[0]
    assert image.shape == (4, 4, 3)
    if expected is None:  # CMYK: PIL's conversion, close to the original colour
        assert np.abs(image.numpy().astype(int) - rgb).max() < 40
    else:
        assert tuple(image[0, 0].tolist()) == expected


def test_jpeg_fast_path_equals_pil(tmp_path):
    rng = np.random.default_rng(0)
    _save(tmp_path / "ds" / "a" / "x.jpg", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    _save(tmp_path / "ds" / "a" / "g.jpg", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    got = load_image_folder(tmp_path / "ds")["train"]
    for image, rel in zip(got.images, got.paths):
        reference = np.asarray(Image.open(tmp_path / "ds" / rel).convert("RGB"))
        np.testing.assert_array_equal(image.numpy(), reference)


def test_parallel_decode_matches_serial(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    sources, blobs = [], bytearray()
    import io

    for i in range(64):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG")
        data = buffer.getvalue() if i != 5 else b"not an image"
        sources.append(decode.Source(f"f{i}", None, len(blobs), len(data)))
        blobs += data
    serial = decode.decode_all(sources, bytes(blobs), workers=1)
    monkeypatch.setattr(decode, "PARALLEL_MIN_IMAGES", 1)
    parallel = decode.decode_all(sources, bytes(blobs), workers=2)
    assert isinstance(serial[5], str) and serial[5] == parallel[5]
    for a, b in zip(serial, parallel):
        if not isinstance(a, str):
            np.testing.assert_array_equal(a, b)


def test_hidden_and_root_files_are_ignored(tmp_path, caplog):
    root = tmp_path / "ds"
    _make_folder(root, per_class=2)
    (root / "README.txt").write_text("about this data")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\1")
    (root / ".hidden").mkdir()
    with caplog.at_level(logging.WARNING):
        splits = load_image_folder(root)
    assert len(splits["train"]) == 6 and splits["train"].classes == ["bird", "cat", "dog"]
    assert "skipped" not in caplog.text


def _members_via_tarfile(path):
    with tarfile.open(path) as tar:
        return [(tuple(p for p in m.name.split("/") if p not in ("", ".")), m.isreg()) for m in tar]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_fast_tar_index_agrees_with_tarfile(tmp_path, fmt):
    """Long and non-ASCII names need pax/GNU headers: the fast parser hands those to tarfile."""
    from resnetlab.data.archives import read_members

    root = tmp_path / "ds"
    made = _make_folder(root, classes=("cat", "dög"), per_class=2)
    long_name = "x" * 120 + ".png"
    if fmt != tarfile.USTAR_FORMAT:  # ustar cannot store a 120-character name at all
        _save(root / "cat" / long_name, np.zeros((8, 8, 3), np.uint8))
    archive = tmp_path / "ds.tar"
    with tarfile.open(archive, "w", format=fmt) as tar:
        tar.add(root, arcname="ds")
    buffer, members = read_members(archive)
    with tarfile.open(archive) as tar:
        expected = {tuple(p for p in m.name.split("/") if p not in ("", ".")): tar.extractfile(m).read()
                    for m in tar if m.isreg()}
    got = {m.parts: bytes(buffer[m.offset : m.offset + m.size]) for m in members if m.kind == "file"}
    assert got == expected
    splits = load_image_folder(archive)
    assert splits["train"].classes == ["cat", "dög"]
    assert len(splits["train"]) == len(made) + (fmt != tarfile.USTAR_FORMAT)


def test_link_inside_an_image_archive_is_refused(tmp_path):
    root = tmp_path / "ds"
    _make_folder(root, per_class=2)
    archive = tmp_path / "ds.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=".")
        info = tarfile.TarInfo("cat/evil.png")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DataError, match="cat/evil.png: is a link"):
        load_image_folder(archive)
    assert len(load_image_folder(archive, skip_bad=True)["train"]) == 6


@pytest.mark.parametrize("name, message", [("../escape/x.png", r"\.\."), ("/abs/x.png", "absolute")])
def test_traversal_in_an_image_archive_is_refused(tmp_path, name, message):
    archive = tmp_path / "ds.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cat/ok.png", b"x")
        zf.writestr(name, b"x")
    with pytest.raises(DataError, match=message):
        load_image_folder(archive)


def test_plain_jpegs_skip_pil(tmp_path, monkeypatch):
    """The libjpeg-turbo path is what makes the 50k-image first load fast; keep it in use."""
    pytest.importorskip("simplejpeg")
    _save(tmp_path / "ds" / "a" / "x.jpg", np.full((8, 8, 3), 77, np.uint8))

    def no_pil(*args, **kwargs):
        raise AssertionError("PIL used for a plain JPEG")

    monkeypatch.setattr(decode.Image, "open", no_pil)
    image = load_image_folder(tmp_path / "ds")["train"].images[0]
    assert abs(int(image[0, 0, 0]) - 77) <= 2


def test_cache_dir_precedence(tmp_path, monkeypatch):
    from resnetlab.data.cache import cache_dir

    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv("RESNETLAB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "resnetlab"


def test_wrapping_folder_is_stripped(tmp_path):
    _make_folder(tmp_path / "outer" / "images", per_class=2)
    splits = load_image_folder(tmp_path / "outer")
    assert splits["train"].classes == ["bird", "cat", "dog"]
    assert splits["train"].paths[0] == "images/bird/0.png"  # paths stay real, for messages


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    array = np.zeros((4, 8, 3), np.uint8)
    array[:, :4] = 255  # left half white
    path = tmp_path / "ds" / "a" / f"x{suffix}"
    path.parent.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    Image.fromarray(array).save(path, exif=exif, **({"quality": 95} if suffix == ".jpg" else {}))
    image = load_image_folder(tmp_path / "ds")["train"].images[0].numpy()
    assert image.shape == (8, 4, 3)
    assert image[:3].min() > 200 and image[5:].max() < 60  # the white half is now on top


def test_archive_bombs_are_refused_before_filling_memory(tmp_path):
    import gzip

    from resnetlab.data.archives import read_members

    payload = b"\0" * (4 << 20)  # 4 MiB of zeros: a few KiB compressed
    (tmp_path / "bomb.tar.gz").write_bytes(gzip.compress(payload))
    with pytest.raises(DataError, match="expands to more than"):
        read_members(tmp_path / "bomb.tar.gz", limit=1 << 20)
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/x.png", payload)
    with pytest.raises(DataError, match="expands to more than"):
        read_members(tmp_path / "bomb.zip", limit=1 << 20)
    truncated = gzip.compress(payload)[:-100]
    (tmp_path / "cut.tar.gz").write_bytes(truncated)
    with pytest.raises(DataError, match="ends early"):
        read_members(tmp_path / "cut.tar.gz")
