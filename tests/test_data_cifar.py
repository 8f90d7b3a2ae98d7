"""CIFAR the official way: download from a real local HTTP server, md5 before anything, safe
extraction, restricted unpickling, archives and extracted folders given by path."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import os
import pickle
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from resnetlab.data import cifar, load_splits
from resnetlab.data.archives import safe_extract_tar
from resnetlab.errors import DataError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _batch(rng, n, start_label=0):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [(start_label + i) % 10 for i in range(n)]
    return {b"batch_label": b"test", b"labels": labels, b"data": data,
            b"filenames": [f"img{i}.png".encode() for i in range(n)]}


def _build_cifar10(root: Path, per_batch: int = 4, n_test: int = 3) -> tuple[Path, dict]:
    """A tiny archive with the official layout: protocol-2 pickles of bytes-keyed dicts."""
    rng = np.random.default_rng(0)
    files = {f"data_batch_{i}": _batch(rng, per_batch, i) for i in range(1, 6)}
    files["test_batch"] = _batch(rng, n_test, 3)
    files["batches.meta"] = {b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, obj in files.items():
            payload = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return archive, files


@pytest.fixture
def small_cifar(tmp_path, monkeypatch):
    """Build the archive and point the cifar10 record at its md5 (per-file md5s not checked)."""
    src = tmp_path / "served"
    src.mkdir()
    archive, files = _build_cifar10(src)
    record = dataclasses.replace(
        cifar.CIFAR["cifar10"],
        md5=hashlib.md5(archive.read_bytes()).hexdigest(),
        train_files=tuple((f"data_batch_{i}", None) for i in range(1, 6)),
        test_files=(("test_batch", None),),
        meta_file=("batches.meta", None),
    )
    monkeypatch.setitem(cifar.CIFAR, "cifar10", record)
    return archive, files


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """Serve a folder from a real HTTP server on 127.0.0.1 in a thread; yields a start function."""
    servers = []

    def start(directory: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _expected_images(batch):
    return batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def test_download_verify_extract_and_load(small_cifar, http_server, tmp_path, monkeypatch):
    archive, files = small_cifar
    url = http_server(archive.parent)
    monkeypatch.setenv(cifar.URL_ENV, url)
    cache = tmp_path / "cache"
    splits = load_splits("cifar10", data_dir=cache, val_size=10, seed=1)
    assert (cache / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()
    assert (cache / "cifar-10-batches-py" / "data_batch_3").is_file()
    assert splits.classes == CLASSES
    assert len(splits.train) == 10 and len(splits.val) == 10
    # the test split is exactly the official test_batch, in order
    np.testing.assert_array_equal(splits.test.images.numpy(), _expected_images(files["test_batch"]))
    assert splits.test.labels.tolist() == files["test_batch"][b"labels"]
    # every train/val image is one of the training batches' images with its label
    train_all = np.concatenate([_expected_images(files[f"data_batch_{i}"]) for i in range(1, 6)])
    got = np.concatenate([splits.train.images.numpy(), splits.val.images.numpy()])
    assert sorted(map(bytes, got)) == sorted(map(bytes, train_all))
    # mean/std of train, carried by val and test
    assert splits.val.mean == splits.train.mean == splits.test.mean


def test_second_load_uses_cache_without_network(small_cifar, tmp_path, monkeypatch, http_server):
    archive, _ = small_cifar
    monkeypatch.setenv(cifar.URL_ENV, http_server(archive.parent))
    cache = tmp_path / "cache"
    load_splits("cifar10", data_dir=cache, val_size=10)
    monkeypatch.setenv(cifar.URL_ENV, "http://127.0.0.1:9/")  # nothing listens there
    assert len(load_splits("cifar10", data_dir=cache, val_size=10).test) == 3


def test_corrupt_download_is_refused_and_not_cached(small_cifar, http_server, tmp_path, monkeypatch):
    archive, _ = small_cifar
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad_dir / archive.name).write_bytes(bytes(data))
    monkeypatch.setenv(cifar.URL_ENV, http_server(bad_dir))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="md5") as info:
        load_splits("cifar10", data_dir=cache)
    assert "not cached" in str(info.value)
    assert list(cache.iterdir()) == []  # no archive, no partial download, no extracted folder


def test_offline_message_says_how_to_supply_a_local_copy(small_cifar, tmp_path):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(DataError) as info:
        cifar.load_cifar("cifar10", tmp_path / "cache", base_url=f"http://127.0.0.1:{port}/")
    message = str(info.value)
    assert "cifar-10-python.tar.gz" in message and "cifar-10-batches-py/" in message
    assert str(tmp_path / "cache") in message
    assert not (tmp_path / "cache" / "cifar-10-python.tar.gz").exists()


def test_archive_and_extracted_folder_given_by_path(small_cifar, tmp_path):
    archive, files = small_cifar
    from_archive = load_splits(str(archive), data_dir=tmp_path / "c1", val_size=10)
    folder = tmp_path / "c1" / "cifar-10-batches-py"
    assert folder.is_dir()
    from_folder = load_splits(folder, val_size=10)
    from_parent = load_splits(tmp_path / "c1", val_size=10)
    for other in (from_folder, from_parent):
        assert other.train.images.equal(from_archive.train.images)
        assert other.test.labels.equal(from_archive.test.labels)


def test_wrong_checksum_of_supplied_archive(small_cifar, tmp_path, monkeypatch):
    archive, _ = small_cifar
    monkeypatch.setitem(cifar.CIFAR, "cifar10", dataclasses.replace(cifar.CIFAR["cifar10"], md5="0" * 32))
    with pytest.raises(DataError, match="wrong checksum") as info:
        load_splits(str(archive), data_dir=tmp_path / "c")
    assert str(archive) in str(info.value)
    assert not (tmp_path / "c" / "cifar-10-batches-py").exists()  # nothing extracted


def test_per_file_md5_of_extracted_batches(small_cifar, tmp_path, monkeypatch):
    archive, _ = small_cifar
    folder = safe_extract_tar(archive, tmp_path, "cifar-10-batches-py")
    record = cifar.CIFAR["cifar10"]
    good = hashlib.md5((folder / "data_batch_1").read_bytes()).hexdigest()
    ok = dataclasses.replace(record, train_files=(("data_batch_1", good),) + record.train_files[1:])
    assert len(cifar.read_batches(ok, folder)["train"]) == 20
    bad = dataclasses.replace(record, train_files=(("data_batch_1", "f" * 32),) + record.train_files[1:])
    with pytest.raises(DataError, match="data_batch_1.*wrong checksum"):
        cifar.read_batches(bad, folder)


def test_official_md5s_are_the_published_ones():
    assert cifar.CIFAR["cifar10"].md5 == "c58f30108f718f92721af3b95e74349a"
    assert cifar.CIFAR["cifar100"].md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert cifar.DEFAULT_BASE_URL + cifar.CIFAR["cifar10"].filename == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_code(small_cifar, tmp_path):
    archive, _ = small_cifar
    folder = safe_extract_tar(archive, tmp_path, "cifar-10-batches-py")
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": _Evil()}, protocol=2))
    with pytest.raises(DataError, match="data_batch_2.*not allowed"):
        cifar.read_batches(cifar.CIFAR["cifar10"], folder)


def _tar_with(tmp_path: Path, name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> Path:
    path = tmp_path / f"evil{len(list(tmp_path.iterdir()))}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        payload = b"x" if kind == tarfile.REGTYPE else b""
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return path


@pytest.mark.parametrize(
    "name, kind, link, message",
    [
        ("cifar-10-batches-py/../../escape", tarfile.REGTYPE, "", r"\.\."),
        ("/tmp/absolute", tarfile.REGTYPE, "", "absolute"),
        ("cifar-10-batches-py/link", tarfile.SYMTYPE, "/etc/passwd", "link"),
        ("cifar-10-batches-py/hard", tarfile.LNKTYPE, "/etc/passwd", "link"),
        ("cifar-10-batches-py/dev", tarfile.CHRTYPE, "", "device"),
        ("elsewhere/file", tarfile.REGTYPE, "", "outside"),
    ],
)
def test_unsafe_archives_are_refused(tmp_path, name, kind, link, message):
    archive = _tar_with(tmp_path, name, kind, link)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=message):
        safe_extract_tar(archive, dest, "cifar-10-batches-py")
    assert not (dest / "cifar-10-batches-py").exists()
    assert not (tmp_path.parent / "escape").exists()


def test_cifar100_layout(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    names = [f"class{i:02d}".encode() for i in range(100)]
    files = {
        "train": {b"data": rng.integers(0, 256, (200, 3072), dtype=np.uint8), b"fine_labels": [i % 100 for i in range(200)],
                  b"coarse_labels": [0] * 200},
        "test": {b"data": rng.integers(0, 256, (5, 3072), dtype=np.uint8), b"fine_labels": [7, 8, 9, 10, 11],
                 b"coarse_labels": [0] * 5},
        "meta": {b"fine_label_names": names, b"coarse_label_names": [b"x"]},
    }
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, obj in files.items():
            payload = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    record = dataclasses.replace(cifar.CIFAR["cifar100"], md5=hashlib.md5(archive.read_bytes()).hexdigest(),
                                 train_files=(("train", None),), test_files=(("test", None),), meta_file=("meta", None))
    monkeypatch.setitem(cifar.CIFAR, "cifar100", record)
    splits = load_splits(archive, data_dir=tmp_path / "cache", val_size=100)
    assert splits.name == "cifar100" and len(splits.classes) == 100 and splits.classes[3] == "class03"
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 100, 5)
    assert torch_bincount(splits.val.labels) == [1] * 100
    assert splits.test.labels.tolist() == [7, 8, 9, 10, 11]


def torch_bincount(labels):
    return labels.bincount(minlength=100).tolist()


def test_archive_put_in_the_cache_by_hand_is_used_offline(small_cifar, tmp_path):
    archive, _ = small_cifar
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / archive.name).write_bytes(archive.read_bytes())
    parts = cifar.load_cifar("cifar10", cache, base_url="http://127.0.0.1:9/")
    assert (len(parts["train"]), len(parts["test"])) == (20, 3)
    assert (cache / "cifar-10-batches-py" / "batches.meta").is_file()
