"""Bad input: each case is a clear DataError naming the file, or with skip_bad a counted warning.

The first half checks one problem per folder; the second (issue 8, item 5) one folder holding every
kind of bad or odd file at once. Odd-but-valid files (L/RGBA/CMYK/P/16-bit, 1x1) load with the
documented conversions; junk the OS drops (.DS_Store, AppleDouble ``._x.jpg``) and a symlink loop are
ignored without hanging. Peak memory for a real, decodable decompression bomb is measured in a
subprocess. Archive escapes not already covered by test_data_folders.py / test_data_cifar.py are
checked at the end.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import struct
import subprocess
import sys
import tarfile
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import class_folder
from PIL import Image

from resnetlab.cli import main
from resnetlab.data import decode, load_splits
from resnetlab.data.archives import safe_extract_tar
from resnetlab.data.folders import load_image_folder
from resnetlab.errors import DataError
from resnetlab.inference.preprocess import ImageTooLargeError, load_image


def _good_folder(root: Path, classes=("a", "b"), per_class=3) -> None:
    class_folder(root, classes, per_class, size=8, fill="solid")


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



# ---- one folder holding every kind of bad file (formerly test_bad_data.py) --------------------
SIZE = 16  # image_size: every image is resized to SIZE x SIZE, so the 1x1 image is legal


@functools.lru_cache(maxsize=4)
def zero_png(width: int, height: int) -> bytes:
    """A *valid, fully decodable* 8-bit grayscale PNG of zeros: ~1 KB per MP on disk,
    width x height bytes (x3 as RGB) once decoded: the decompression bomb.

    One chunk of rows is deflated once and its block repeated (each ends in a full flush, so it
    refers to nothing before it); the zlib trailer's Adler-32 covers all the rows.
    """
    row = width + 1  # filter byte 0, then the pixels
    rows_per_chunk = max(1, min(height, (4 << 20) // row))
    full, rest = divmod(height, rows_per_chunk)
    chunk = bytes(row * rows_per_chunk)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = last.compress(bytes(row * rest)) + last.flush()  # the final block
    adler = 1
    for _ in range(full):
        adler = zlib.adler32(chunk, adler)
    adler = zlib.adler32(bytes(row * rest), adler)
    idat = b"\x78\xda" + block * full + tail + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def test_the_bomb_file_is_a_valid_png():
    data = zero_png(1500, 1234)
    assert len(data) < 20_000
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.size == (1500, 1234) and image.getextrema() == (0, 0)


def _save(image: Image.Image, path: Path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def _jpeg(seed: int, size=(24, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


BAD = {  # relative path -> words its problem must contain
    "good/truncated.jpg": "truncated",
    "good/zero.jpg": "empty (0 bytes)",
    "good/notes.jpg": "not an image",
    "modes/bomb.png": "decompression bomb",
    "empty/": "class folder is empty",
    "modes/self.jpg": "cannot be read",  # a symlink to itself: ELOOP when opened
}


@pytest.fixture
def bad_folder(tmp_path) -> Path:
    """The fixture folder: 3 classes (good, modes, empty) mixing valid, odd and broken files."""
    root = tmp_path / "bad-data"
    good = root / "good"
    good.mkdir(parents=True)
    for i in range(3):
        (good / f"{i}.jpg").write_bytes(_jpeg(i))
    (good / "truncated.jpg").write_bytes(_jpeg(9)[:-120])
    (good / "zero.jpg").write_bytes(b"")
    (good / "notes.jpg").write_text("shopping list: eggs, milk\n")
    (good / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (good / "._0.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # AppleDouble resource fork: not a JPEG

    modes = root / "modes"
    _save(Image.new("L", (20, 20), 77), modes / "gray.png")
    _save(Image.new("RGBA", (20, 20), (10, 20, 30, 0)), modes / "rgba.png")
    _save(Image.new("CMYK", (20, 20), (0, 0, 0, 0)), modes / "cmyk.jpg", quality=100)  # no ink: white
    palette = Image.new("P", (20, 20), 1)
    palette.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    _save(palette, modes / "palette.png")
    _save(Image.fromarray(np.full((20, 20), 65535, np.uint16)), modes / "sixteen.png")  # I;16 full scale
    _save(Image.new("RGB", (1, 1), (1, 2, 3)), modes / "one.png")
    (modes / "bomb.png").write_bytes(zero_png(12_000, 12_000))  # 144 MP > PIL's 89 MP limit; ~150 KB
    (modes / "self.jpg").symlink_to("self.jpg")
    (modes / "loop").symlink_to("..", target_is_directory=True)  # modes/loop/modes/loop/... forever if followed

    (root / "empty").mkdir()
    (root / "empty" / ".hidden.jpg").write_bytes(_jpeg(4))  # hidden: does not make the class non-empty
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


def test_without_skip_bad_the_error_names_a_file_and_counts_the_rest(bad_folder):
    # Folder-level problems (the empty class) are found before any decoding, so they come first.
    with pytest.raises(DataError, match=r"empty/: class folder is empty.*--skip-bad"):
        load_image_folder(bad_folder, image_size=SIZE)
    (bad_folder / "empty" / ".hidden.jpg").unlink()
    (bad_folder / "empty").rmdir()
    with pytest.raises(DataError) as info:
        load_image_folder(bad_folder, image_size=SIZE)
    message = str(info.value)
    assert str(bad_folder) in message and "--skip-bad" in message
    first = next(rel for rel in BAD if f": {rel}:" in message)
    assert BAD[first] in message
    assert f"and {len(BAD) - 2} more bad files" in message, message  # junk, hidden files and the dir loop are not problems


def test_skip_bad_counts_and_names_each_skip(bad_folder, caplog):
    with caplog.at_level(logging.WARNING):
        splits = load_image_folder(bad_folder, image_size=SIZE, skip_bad=True)
    train = splits["train"]
    assert f"skipped {len(BAD)} bad" in caplog.text
    for rel, words in BAD.items():
        line = next((p for p in caplog.text.split("; ") if rel in p), None)
        if len(BAD) <= 5 or line is not None:  # the log shows the first five in full
            assert line is not None and words in line, (rel, caplog.text)
    assert train.classes == ["good", "modes"]  # the empty class is dropped, not an all-zero label
    expected = {"good/0.jpg", "good/1.jpg", "good/2.jpg", "modes/gray.png", "modes/rgba.png", "modes/cmyk.jpg",
                "modes/palette.png", "modes/sixteen.png", "modes/one.png"}
    assert set(train.paths) == expected
    assert train.images.shape == (len(expected), SIZE, SIZE, 3) and str(train.images.dtype) == "torch.uint8"
    pixel = {name: train.images[i, SIZE // 2, SIZE // 2].tolist() for i, name in enumerate(train.paths)}
    assert pixel["modes/gray.png"] == [77, 77, 77]
    assert pixel["modes/rgba.png"] == [10, 20, 30]  # alpha dropped, colour kept
    assert pixel["modes/sixteen.png"] == [255, 255, 255]  # 16-bit scaled, not clipped to 8 bits
    assert pixel["modes/palette.png"] == [200, 0, 0]
    assert min(pixel["modes/cmyk.jpg"]) >= 250  # CMYK without ink is white
    assert (train.images[train.paths.index("modes/one.png")] == torch_tensor([1, 2, 3])).all()


def test_each_problem_alone_is_the_error(bad_folder):
    """Remove everything else: each bad file by itself is the DataError, named with its reason."""
    for rel, words in BAD.items():
        keep = bad_folder.parent / f"only-{rel.replace('/', '_')}"
        (keep / "good").mkdir(parents=True)
        for i in range(2):
            (keep / "good" / f"{i}.jpg").write_bytes(_jpeg(i))
        src = bad_folder / rel
        dst = keep / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        elif src.is_dir():
            dst.mkdir(exist_ok=True)
        else:
            dst.write_bytes(src.read_bytes())
        with pytest.raises(DataError) as info:
            load_image_folder(keep, image_size=SIZE)
        assert rel in str(info.value) and words in str(info.value), str(info.value)


def torch_tensor(values):
    import torch

    return torch.tensor(values, dtype=torch.uint8)


# --------------------------------------------------------------------------- the bomb's memory

_MEASURE = textwrap.dedent("""
    import json, re, resource, sys
    from pathlib import Path
    from PIL import Image
    from resnetlab.data import decode
    from resnetlab.data.folders import load_image_folder
    from resnetlab.errors import DataError
    from resnetlab.inference.preprocess import load_image
    if sys.argv[2] == "unlimited":  # the negative control lifts every pixel limit
        decode.MAX_PIXELS = Image.MAX_IMAGE_PIXELS = 10**10
    folder = Path(sys.argv[1])

    def peak_kib():  # VmHWM: the high-water mark of resident memory, in KiB
        try:
            return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
        except (OSError, AttributeError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    try:  # reset the high-water mark to the current size (Linux >= 4.0), so the import's peak hides nothing
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    before = peak_kib()
    outcomes = []
    for load in (lambda: load_image_folder(folder, image_size=16),
                 lambda: load_image((folder / "a" / "bomb.png").read_bytes(), name="bomb.png")):
        try:
            load()
            outcomes.append("loaded")
        except DataError as exc:
            outcomes.append(str(exc))
    after = peak_kib()
    print(json.dumps({"peak_growth_mb": (after - before) / 1024, "outcomes": outcomes}))
""")
BOMB_BOUND_MB = 40  # decoding it would take 144 MB as L and 432 MB as RGB


def _measure(folder: Path, limits: str) -> dict:
    """Peak RSS growth while the training loader, then the inference loader, meet the bomb."""
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "ok.jpg").write_bytes(_jpeg(0))
    (folder / "a" / "bomb.png").write_bytes(zero_png(12_000, 12_000))
    env = dict(os.environ, OMP_NUM_THREADS="1", RESNETLAB_CACHE=str(folder.parent / "cache"))
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(folder), limits], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a subprocess importing torch: ~7 s on a busy 2-core box
def test_decompression_bomb_is_refused_with_bounded_memory(tmp_path):
    result = _measure(tmp_path / "bomb-ds", "default")
    folder_error, bytes_error = result["outcomes"]
    assert "a/bomb.png: is a decompression bomb" in folder_error, result
    assert "bomb.png: is a decompression bomb: 12000x12000 = 144,000,000 pixels" in bytes_error, result
    assert result["peak_growth_mb"] < BOMB_BOUND_MB, result


@pytest.mark.slow
def test_the_bomb_is_real_without_the_limit(tmp_path):
    """Negative control: with the pixel limits lifted the same files cost hundreds of MB, so the bound means something."""
    result = _measure(tmp_path / "bomb-ds", "unlimited")
    assert result["peak_growth_mb"] > 3 * BOMB_BOUND_MB, result


def test_bomb_through_the_inference_loader_is_refused_before_decoding():
    with pytest.raises(ImageTooLargeError, match="144,000,000 pixels"):
        load_image(zero_png(12_000, 12_000), name="bomb.png")


# --------------------------------------------------------------------------- archive escapes not covered elsewhere


def _good_members() -> dict[str, bytes]:
    return {f"cat/{i}.jpg": _jpeg(i) for i in range(2)} | {f"dog/{i}.jpg": _jpeg(10 + i) for i in range(2)}


def _tar(path: Path, evil: tarfile.TarInfo, payload: bytes = b"", fmt=tarfile.USTAR_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in _good_members().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        evil.size = len(payload)
        tar.addfile(evil, io.BytesIO(payload))
    return path


def _info(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT], ids=["ustar", "pax"])
@pytest.mark.parametrize("name, message", [
    ("cat/../../escape.jpg", r"'\.\.'"),
    ("/tmp/resnetlab-abs-escape.jpg", "absolute path"),
    ("cat\\..\\..\\escape.jpg", r"'\.\.'"),  # Windows separators
])
def test_image_tar_with_escaping_names_is_refused(tmp_path, fmt, name, message):
    work = tmp_path / "work"
    work.mkdir()
    archive = _tar(work / "ds.tar", _info(name), _jpeg(5), fmt=fmt)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(DataError, match=message):
        load_image_folder(archive)
    with pytest.raises(DataError, match=message):  # skip_bad does not make an escaping archive acceptable
        load_image_folder(archive, skip_bad=True)
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere near
    assert not Path("/tmp/resnetlab-abs-escape.jpg").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE], ids=["symlink", "hardlink"])
def test_image_tar_links_pointing_outside_are_refused(tmp_path, kind):
    archive = _tar(tmp_path / "ds.tar", _info("cat/passwd.jpg", kind, "/etc/passwd"), fmt=tarfile.PAX_FORMAT)
    with pytest.raises(DataError, match="cat/passwd.jpg: is a link"):
        load_image_folder(archive)
    assert len(load_image_folder(archive, skip_bad=True)["train"]) == 4  # counted skip; the link is never read


def test_zip_symlink_pointing_outside_is_refused(tmp_path):
    archive = tmp_path / "ds.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in _good_members().items():
            zf.writestr(name, data)
        link = zipfile.ZipInfo("cat/secret.jpg")
        link.external_attr = (0o120777 << 16)  # S_IFLNK: how Info-ZIP stores a symlink; the data is its target
        zf.writestr(link, "../../../../etc/passwd")
    with pytest.raises(DataError, match="cat/secret.jpg: is a link"):
        load_image_folder(archive)
    assert len(load_image_folder(archive, skip_bad=True)["train"]) == 4


def test_extraction_through_a_planted_link_is_refused(tmp_path):
    """The two-step escape: a link ``top/x -> /outside`` then a file ``top/x/pwned``; nothing lands outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(_info("cifar-10-batches-py/", tarfile.DIRTYPE))
        tar.addfile(_info("cifar-10-batches-py/x", tarfile.SYMTYPE, str(outside)))
        payload = b"pwned"
        info = _info("cifar-10-batches-py/x/pwned")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="link"):
        safe_extract_tar(archive, dest, "cifar-10-batches-py")
    assert list(outside.iterdir()) == []
    assert not (dest / "cifar-10-batches-py").exists() and [p.name for p in dest.iterdir()] == []  # no temp folder left
