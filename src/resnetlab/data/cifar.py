"""CIFAR-10 and CIFAR-100 from the official python archives (Krizhevsky 2009).

The archive is downloaded once into the cache (``$RESNETLAB_CACHE`` or ``~/.cache/resnetlab``,
or ``data_dir``), its published md5 is checked *before* anything is extracted or unpickled, it is
extracted safely, and the batches are unpickled with an Unpickler that only admits the numpy
types those files need (a pickle can otherwise run arbitrary code).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from resnetlab.data.archives import safe_extract_tar
from resnetlab.data.cache import cache_dir, file_digest
from resnetlab.data.imageset import ImageSet
from resnetlab.errors import DataError

log = logging.getLogger(__name__)

URL_ENV = "RESNETLAB_CIFAR_URL"  # base URL override (mirrors, tests with a local server)
DEFAULT_BASE_URL = "https://www.cs.toronto.edu/~kriz/"


@dataclass(frozen=True)
class CifarRecord:
    """How one official CIFAR archive is laid out; md5s as published (None: not checked)."""

    name: str
    filename: str
    md5: str | None
    folder: str
    train_files: tuple[tuple[str, str | None], ...]
    test_files: tuple[tuple[str, str | None], ...]
    meta_file: tuple[str, str | None]
    label_key: bytes
    names_key: bytes


CIFAR = {
    "cifar10": CifarRecord(
        name="cifar10",
        filename="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train_files=(
            ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            ("data_batch_4", "634d18415352ddfa80567beed471001a"),
            ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
        ),
        test_files=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
        meta_file=("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
        label_key=b"labels",
        names_key=b"label_names",
    ),
    "cifar100": CifarRecord(
        name="cifar100",
        filename="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train_files=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
        test_files=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
        meta_file=("meta", "7973b15100ade9c7d40fb424638fde48"),
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
    ),
}


def load_cifar(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    base_url: str | None = None,
    download: bool = True,
) -> dict[str, ImageSet]:
    """``{"train", "test"}`` ImageSets of the official CIFAR split, fetching the archive if needed."""
    record = CIFAR[name]
    root = cache_dir(data_dir)
    folder = root / record.folder
    if not folder.is_dir():
        archive = root / record.filename
        if not archive.is_file():
            if not download:
                raise DataError(_how_to_supply(record, root, "it is not in the cache"))
            fetch_archive(record, root, base_url=base_url)
        folder = extract_archive(record, archive, root)
    return read_batches(record, folder)


def load_cifar_path(path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> dict[str, ImageSet]:
    """Load CIFAR from a user-supplied official archive or its extracted folder."""
    path = Path(path)
    record = detect_cifar(path)
    if record is None:
        raise DataError(f"{path}: not an official CIFAR-10/100 python archive or folder")
    if path.is_dir():
        folder = path if (path / record.meta_file[0]).exists() else path / record.folder
        return read_batches(record, folder)
    return read_batches(record, extract_archive(record, path, cache_dir(data_dir)))


def detect_cifar(path: Path) -> CifarRecord | None:
    """The CIFAR record ``path`` is an archive or folder of, else None."""
    for record in CIFAR.values():
        if path.is_dir():
            if (path / record.meta_file[0]).is_file() and (path / record.train_files[0][0]).is_file():
                return record
            if (path / record.folder / record.meta_file[0]).is_file():
                return record
        elif path.name == record.filename:
            return record
    return None


# --- download ------------------------------------------------------------------------------------
def fetch_archive(record: CifarRecord, root: Path, *, base_url: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``record.filename`` into ``root``; a file whose md5 differs is deleted, never cached."""
    base = base_url or os.environ.get(URL_ENV) or DEFAULT_BASE_URL
    url = base.rstrip("/") + "/" + record.filename
    root.mkdir(parents=True, exist_ok=True)
    target = root / record.filename
    fd, tmp_name = tempfile.mkstemp(prefix=f".{record.filename}.", suffix=".part", dir=root)
    digest = hashlib.md5()
    try:
        log.info("downloading %s to %s", url, target)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(1 << 20):
                digest.update(block)
                out.write(block)
        if record.md5 is not None and digest.hexdigest() != record.md5:
            raise DataError(
                f"{url}: downloaded file has md5 {digest.hexdigest()}, expected {record.md5}; "
                "refusing it (corrupt or tampered download, not cached)"
            )
        os.replace(tmp_name, target)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DataError(_how_to_supply(record, root, f"downloading {url} failed ({getattr(exc, 'reason', exc)})")) from exc
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def _how_to_supply(record: CifarRecord, root: Path, why: str) -> str:
    return (
        f"{record.name}: {why}. To use a local copy, pass the path of {record.filename} or of its "
        f"extracted {record.folder}/ folder as DATA, or put either in {root} "
        f"(the cache: --data-dir or ${'RESNETLAB_CACHE'})"
    )


# --- extraction ----------------------------------------------------------------------------------
def extract_archive(record: CifarRecord, archive: Path, root: Path) -> Path:
    """Verify ``archive``'s md5, then extract it safely under ``root``."""
    if not archive.is_file():
        raise DataError(f"{archive}: no such file")
    try:
        actual = file_digest(archive, "md5")
    except OSError as exc:
        raise DataError(f"{archive}: cannot read ({exc.strerror or exc})") from exc
    if record.md5 is not None and actual != record.md5:
        raise DataError(
            f"{archive}: wrong checksum (md5 {actual}, the official {record.filename} has {record.md5}); "
            "the file is corrupt or not the official archive; delete it and download again"
        )
    try:
        return safe_extract_tar(archive, root, record.folder)
    except tarfile.TarError as exc:  # pragma: no cover - safe_extract_tar already wraps these
        raise DataError(f"{archive}: cannot extract ({exc})") from exc


# --- reading the batches -------------------------------------------------------------------------
class _RestrictedUnpickler(pickle.Unpickler):
    """Only the globals a pickled numpy array needs: no arbitrary code from a pickle."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # Python 3 protocol-2 pickles store bytes through it
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR batch")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own reconstructor, wherever it lives
        if module == "_codecs":
            import codecs

            return codecs.encode
        return getattr(np, name)


def _unpickle(path: Path, md5: str | None) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: missing (an incomplete CIFAR folder; delete it and let resnetlab re-extract)")
    data = path.read_bytes()
    if md5 is not None and hashlib.md5(data).hexdigest() != md5:
        raise DataError(f"{path}: wrong checksum (md5 {hashlib.md5(data).hexdigest()}, expected {md5}); the file is corrupt")
    try:
        import io

        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:
        raise DataError(f"{path}: not a readable CIFAR batch ({exc})") from exc


def read_batches(record: CifarRecord, folder: Path) -> dict[str, ImageSet]:
    meta = _unpickle(folder / record.meta_file[0], record.meta_file[1])
    try:
        classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[record.names_key]]
    except (KeyError, TypeError) as exc:
        raise DataError(f"{folder / record.meta_file[0]}: no {record.names_key.decode()} list") from exc
    out = {}
    for split, files in (("train", record.train_files), ("test", record.test_files)):
        images, labels = [], []
        for filename, md5 in files:
            batch = _unpickle(folder / filename, md5)
            try:
                data = np.asarray(batch[b"data"], dtype=np.uint8)
                lab = np.asarray(batch[record.label_key], dtype=np.int64)
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{folder / filename}: missing 'data' or labels ({exc})") from exc
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(lab) != len(data):
                raise DataError(f"{folder / filename}: expected data (N, 3072) and N labels, got {data.shape} and {lab.shape}")
            if len(lab) and (lab.min() < 0 or lab.max() >= len(classes)):
                raise DataError(f"{folder / filename}: labels outside 0..{len(classes) - 1}")
            # Rows are 1024 R, then 1024 G, then 1024 B values (row-major 32x32): to (N, H, W, 3).
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(lab)
        out[split] = ImageSet(
            images=torch.from_numpy(np.ascontiguousarray(np.concatenate(images))),
            labels=torch.from_numpy(np.concatenate(labels)),
            classes=classes,
            source=f"{record.name} ({folder})",
        )
    return out
