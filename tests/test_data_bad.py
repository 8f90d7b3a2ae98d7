"""Bad input: each case is a clear DataError naming the file, or with skip_bad a counted warning."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnetlab.cli import main
from resnetlab.data import decode, load_splits
from resnetlab.data.folders import load_image_folder
from resnetlab.errors import DataError


def _good_folder(root: Path, classes=("a", "b"), per_class=3) -> None:
    for ci, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8, 3), ci * 50 + i, np.uint8)).save(root / name / f"{i}.png")


def _jpeg_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims width x height pixels (never decodable in memory)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


BAD_FILES = {
    "corrupt": ("a/bad.jpg", lambda: b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "corrupt"),
    "truncated": ("a/bad.jpg", lambda: _jpeg_bytes()[:-200], "truncated"),
    "truncated-header": ("a/bad.jpg", lambda: _jpeg_bytes()[:300], "truncated"),
    "zero-byte": ("a/bad.png", lambda: b"", "empty"),
    "not-an-image": ("a/bad.png", lambda: b"hello, I am text", "not an image"),
    "non-image-extension": ("a/notes.txt", lambda: b"some notes", "not an image file"),
    "bomb": ("a/bad.png", lambda: _bomb_png(50_000, 50_000), "decompression bomb"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_named_or_skipped(tmp_path, case, caplog):
    root = tmp_path / "ds"
    _good_folder(root)
    rel, make, reason = BAD_FILES[case]
    (root / rel).write_bytes(make())
    with pytest.raises(DataError) as info:
        load_image_folder(root)
    message = str(info.value)
    assert rel in message and reason in message and "--skip-bad" in message
    with caplog.at_level(logging.WARNING):
        splits = load_image_folder(root, skip_bad=True)
    assert len(splits["train"]) == 6 and rel not in splits["train"].paths
    assert "skipped 1 bad" in caplog.text and rel in caplog.text


def test_bomb_limit_is_ours_and_clear(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    _good_folder(root)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "a" / "big.png")
    monkeypatch.setattr(decode, "MAX_PIXELS", 1000)
    with pytest.raises(DataError, match=r"a/big.png: is a decompression bomb: 40x40 = 1,600 pixels .* limit of 1,000"):
        load_image_folder(root)


def test_unreadable_file(tmp_path, caplog):
    root = tmp_path / "ds"
    _good_folder(root)
    (root / "a" / "gone.png").symlink_to(tmp_path / "does-not-exist.png")  # readable by nobody, root included
    with pytest.raises(DataError, match="a/gone.png: cannot be read"):
        load_image_folder(root)
    with caplog.at_level(logging.WARNING):
        assert len(load_image_folder(root, skip_bad=True)["train"]) == 6
    assert "skipped 1 bad" in caplog.text


def test_empty_class_folder(tmp_path, caplog):
    root = tmp_path / "ds"
    _good_folder(root)
    (root / "c").mkdir()
    with pytest.raises(DataError, match="c/: class folder is empty"):
        load_image_folder(root)
    with caplog.at_level(logging.WARNING):
        splits = load_image_folder(root, skip_bad=True)
    assert splits["train"].classes == ["a", "b"]
    assert "skipped 1 bad" in caplog.text


def test_class_names_differing_only_in_case(tmp_path, caplog):
    root = tmp_path / "ds"
    _good_folder(root, classes=("Cat", "cat", "dog"))
    with pytest.raises(DataError, match="cat/: class name differs only in case from Cat/"):
        load_image_folder(root)
    with caplog.at_level(logging.WARNING):
        splits = load_image_folder(root, skip_bad=True)
    assert splits["train"].classes == ["Cat", "dog"]
    assert "skipped 1 bad" in caplog.text


def test_several_bad_files_are_counted(tmp_path, caplog):
    root = tmp_path / "ds"
    _good_folder(root)
    for i in range(3):
        (root / "b" / f"zero{i}.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"and 2 more bad files"):
        load_image_folder(root)
    with caplog.at_level(logging.WARNING):
        load_image_folder(root, skip_bad=True)
    assert "skipped 3 bad" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the cached load still reports them
        load_image_folder(root, skip_bad=True)
    assert "skipped 3 bad" in caplog.text


@pytest.mark.parametrize("spec, message", [
    ("no/such/folder", "no such file or folder"),
    ("notes.txt", "not a folder or a .tar"),
    ("broken.tar.gz", "cannot read archive"),
    ("empty", "no class folders"),
])
def test_bad_data_paths(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=message) as info:
        load_splits(spec)
    assert spec in str(info.value)


def test_cli_reports_bad_data_in_one_line(tmp_path, capsys):
    root = tmp_path / "ds"
    _good_folder(root)
    (root / "a" / "zero.png").write_bytes(b"")
    assert main(["data", "info", str(root), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "a/zero.png: is empty" in err
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert main(["data", "info", str(root), "--skip-bad", "--val-size", "2", "--out", str(tmp_path / "out")]) == 0
