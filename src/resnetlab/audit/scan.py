"""Read every image of a dataset for the audit: small thumbnails, pixel digests, sizes, and the files
that do not decode (named, never fatal).

Which files are images and how they decode are the data module's rules (``data.folders`` plans the
folder, ``data.decode.decode_bytes`` decodes), so the audit sees exactly what training would load.
Images are decoded at their own size (duplicates are exact in *pixels*, not in file bytes; tiny and
odd-shaped files must keep their shape) and then shrunk to ``THUMB`` x ``THUMB`` for hashing,
features and galleries.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from resnetlab import imaging
from resnetlab.data.archives import is_archive, read_members
from resnetlab.data.cifar import CIFAR, detect_cifar
from resnetlab.data.decode import BadImage, Source, decode_bytes, read_image_file
from resnetlab.data.folders import _Entry, _plan, _strip_single_top, walk_folder
from resnetlab.data.splits import printable_name
from resnetlab.errors import DataError

THUMB = 32  # pHash works on a 32x32 grey image (Zauner 2010); CIFAR images are this size already


@dataclass
class Scan:
    """Every decodable image of one or more datasets, in one flat table (index i = one image)."""

    classes: list[str]
    thumbs: np.ndarray  # uint8 (N, THUMB, THUMB, 3)
    labels: np.ndarray  # int64 (N,)
    splits: list[str]  # "train", "test"... ("OTHER/train" for the --against dataset)
    names: list[str]  # file path inside its dataset ("train[123]" for array datasets), "OTHER/" + that for --against
    digests: list[bytes]  # blake2b of the decoded pixels and their shape
    sizes: np.ndarray  # int64 (N, 2): height, width as decoded
    std: np.ndarray  # float32 (N,): pixel standard deviation over all channels (0..255)
    gray: np.ndarray  # bool (N,): stored as RGB but the three channels are equal
    bad: list[dict] = field(default_factory=list)  # {"split", "name", "reason"}: files that did not decode
    sources: dict[str, str] = field(default_factory=dict)  # dataset tag -> the DATA spec given

    def __len__(self) -> int:
        return len(self.labels)


def _digest(array: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16, person=str(array.shape).encode()[:16]).digest()


def _thumb(array: np.ndarray) -> np.ndarray:
    if array.shape[:2] == (THUMB, THUMB):
        return array
    return np.asarray(imaging.fit(Image.fromarray(array), (THUMB, THUMB)), dtype=np.uint8)


class _Builder:
    def __init__(self) -> None:
        self.rows: dict[str, list] = {k: [] for k in ("thumbs", "labels", "splits", "names", "digests", "sizes", "std", "gray")}
        self.bad: list[dict] = []

    def add(self, array: np.ndarray, label: int, split: str, name: str) -> None:
        r = self.rows
        r["thumbs"].append(_thumb(array))
        r["labels"].append(label)
        r["splits"].append(split)
        r["names"].append(name)
        r["digests"].append(_digest(array))
        r["sizes"].append(array.shape[:2])
        # std over a subsample on big photos: the "constant image" test needs no more precision
        step = max(1, int(np.sqrt(array.shape[0] * array.shape[1] / 65536)))
        sample = array[::step, ::step].astype(np.float32)
        r["std"].append(float(sample.std()))
        r["gray"].append(bool(np.array_equal(sample[..., 0], sample[..., 1]) and np.array_equal(sample[..., 1], sample[..., 2])))

    def add_bad(self, split: str, name: str, reason: str) -> None:
        self.bad.append({"split": split, "name": name, "reason": reason})


def scan_dataset(spec: str | os.PathLike, *, tag: str = "", data_dir=None) -> Scan:
    """Decode every image of DATA ``spec``; ``tag`` prefixes split names ("OTHER/train")."""
    builder = _Builder()
    text = str(spec)
    path = Path(text).expanduser()
    is_cifar_name = text.lower().replace("-", "") in CIFAR and not path.exists()
    if not is_cifar_name and not path.exists():
        raise DataError(f"DATA {text!r}: no such file or folder (expected cifar10, cifar100, an image folder, "
                        "or a .tar/.tar.gz/.tgz/.zip archive of one)")
    if is_cifar_name or detect_cifar(path) is not None:
        classes = _scan_arrays(text, builder, tag, data_dir)
    elif path.is_dir() or (path.is_file() and is_archive(path)):
        classes = _scan_files(path, builder, tag)
    else:
        raise DataError(f"{path}: not a folder or a .tar/.tar.gz/.tgz/.zip archive of image folders")
    return _finish(builder, classes, {tag or "data": text})


def _scan_arrays(spec: str, builder: _Builder, tag: str, data_dir) -> list[str]:
    """CIFAR archives hold arrays, not files: every image decodes, and its name is split[index]."""
    from resnetlab.data.splits import load_splits

    splits = load_splits(spec, data_dir=data_dir, val_size=0)  # 0: keep train whole, the audit splits nothing
    for split, part in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        if part is None:
            continue
        images, labels = part.images.numpy(), part.labels.numpy()
        for i in range(len(part)):
            builder.add(images[i], int(labels[i]), tag + split, f"{tag}{split}[{i}]")
    return list(splits.classes)


def _scan_files(path: Path, builder: _Builder, tag: str) -> list[str]:
    buffer = None
    if path.is_dir():
        entries = _strip_single_top(walk_folder(path))
    else:
        buffer, members = read_members(path)
        entries = _strip_single_top([_Entry(m.parts, m.kind, Source("/".join(m.parts), None, m.offset, m.size)) for m in members])
    plan = _plan(entries, path)
    for problem in plan.problems:  # non-image files, empty class folders...: listed, not fatal
        name, _, reason = problem.partition(": ")
        builder.add_bad(tag or "", tag + printable_name(name), reason)
    for split, files in plan.files.items():
        for source, label in files:
            name = tag + printable_name(source.name)
            try:
                if source.refused is not None:
                    raise BadImage(source.refused)
                data = read_image_file(source.path) if source.path is not None else memoryview(buffer)[source.offset:source.offset + source.size]
                array = decode_bytes(data)
            except BadImage as exc:
                builder.add_bad(tag + split, name, str(exc))
                continue
            builder.add(array, label, tag + split, name)
    return [printable_name(c) for c in plan.classes]


def _finish(builder: _Builder, classes: list[str], sources: dict[str, str]) -> Scan:
    r = builder.rows
    n = len(r["labels"])
    return Scan(
        classes=classes,
        thumbs=np.stack(r["thumbs"]) if n else np.zeros((0, THUMB, THUMB, 3), np.uint8),
        labels=np.asarray(r["labels"], dtype=np.int64),
        splits=r["splits"], names=r["names"], digests=r["digests"],
        sizes=np.asarray(r["sizes"], dtype=np.int64).reshape(n, 2),
        std=np.asarray(r["std"], dtype=np.float32), gray=np.asarray(r["gray"], dtype=bool),
        bad=builder.bad, sources=sources,
    )


def merge(a: Scan, b: Scan) -> Scan:
    """``a`` and ``--against`` ``b`` in one table; ``b``'s labels are mapped onto ``a``'s class names
    (a class only ``b`` has is appended), so a cross-dataset duplicate can also show a label clash."""
    classes = list(a.classes) + [c for c in b.classes if c not in a.classes]
    remap = np.array([classes.index(c) for c in b.classes], dtype=np.int64)
    return Scan(
        classes=classes,
        thumbs=np.concatenate([a.thumbs, b.thumbs]),
        labels=np.concatenate([a.labels, remap[b.labels] if len(b.labels) else b.labels]),
        splits=a.splits + b.splits, names=a.names + b.names, digests=a.digests + b.digests,
        sizes=np.concatenate([a.sizes, b.sizes]), std=np.concatenate([a.std, b.std]),
        gray=np.concatenate([a.gray, b.gray]), bad=a.bad + b.bad, sources={**a.sources, **b.sources},
    )
