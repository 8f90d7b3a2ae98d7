"""Image-folder datasets: ``root/<class>/*.jpg`` (optionally under ``train/ val/ test/``), as a
folder or a .tar/.tar.gz/.tgz/.zip archive of one.

Images are decoded once on all cores and the decoded uint8 arrays are cached on disk, keyed by the
archive's bytes (or the folder's file list and contents) plus the decode settings; the second run
loads the cache and never decodes again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from resnetlab.data.archives import is_archive, read_members
from resnetlab.data.cache import cache_dir, file_digest
from resnetlab.data.decode import IMAGE_EXTENSIONS, JUNK_NAMES, BadImage, Source, decode_all, read_image_file
from resnetlab.data.imageset import ImageSet
from resnetlab.errors import DataError
from resnetlab.utils.atomic import atomic_write_with
from resnetlab.utils.regular_files import not_regular_reason

log = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
FOLDER_READ_ALREADY = "is a link to a folder read already"
CACHE_VERSION = 4  # bump when decoding rules change so old caches are not reused (4: resnetlab.imaging, JPEG draft)


@dataclass
class _Entry:
    parts: tuple[str, ...]  # relative path inside the dataset root
    kind: str  # "file", "dir" or "other" (never read: FIFO, device, broken link, link in an archive...)
    source: Source | None = None
    reason: str | None = None  # why an "other" entry is not read
    outside: str | None = None  # a symlink's target when it lies outside the dataset folder


@dataclass
class _Plan:
    """What to decode: per split, the files and their labels; plus problems found on the way."""

    classes: list[str]
    files: dict[str, list[tuple[Source, int]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def load_image_folder(
    path: str | os.PathLike,
    *,
    image_size: int | None = None,
    skip_bad: bool = False,
    data_dir: str | os.PathLike | None = None,
    decode: bool = True,
) -> dict[str, ImageSet]:
    """Load an image-folder dataset; returns ``{"train": ..., "val"?: ..., "test"?: ...}``.

    ``decode=False`` on a folder (not an archive, whose members are no files to read again) returns
    files-only ImageSets (``images`` None): the same walk, classes, files and problems, each file's
    header checked instead of decoding it, and no cache (there is nothing decoded to keep).
    """
    path = Path(path)
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image_size (--image-size) must be a positive integer, got {image_size!r}")
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    settings = {"image_size": image_size, "skip_bad": bool(skip_bad), "version": CACHE_VERSION}
    buffer: bytes | bytearray | None = None
    if path.is_file():
        if not is_archive(path):
            raise DataError(f"{path}: not a folder or a .tar/.tar.gz/.tgz/.zip archive of image folders")
        try:
            content_key = file_digest(path)
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        cached = _load_cache(_cache_path(content_key, settings, data_dir), path)
        if cached is not None:
            return cached
        buffer, members = read_members(path)
        entries = _strip_single_top([_Entry(m.parts, m.kind, Source("/".join(m.parts), None, m.offset, m.size)) for m in members])
    elif path.is_dir():
        walked = walk_folder(path)
        _warn_outside_links(path, walked)
        entries = _strip_single_top(walked)
        if not decode:
            return _files_only(_plan(entries, path), path, skip_bad)
        content_key = _folder_key(entries)
        cached = _load_cache(_cache_path(content_key, settings, data_dir), path)
        if cached is not None:
            return cached
    else:
        raise DataError(f"{path}: not a regular file or folder")

    plan = _plan(entries, path)
    if plan.problems and not skip_bad:
        raise DataError(_problem_message(path, plan.problems))
    splits = _decode(plan, buffer, image_size, path, skip_bad)
    _save_cache(_cache_path(content_key, settings, data_dir), splits, plan.problems)
    if plan.problems:
        _warn_skipped(path, plan.problems)
    return splits


# --- finding the files -------------------------------------------------------------------------
def walk_folder(root: str | os.PathLike) -> list[_Entry]:
    """Every entry under ``root``, depth first in name order, each typed by what it really is.

    Symlinks policy (README, Safety): a link is followed, to a file or a folder, wherever it points;
    one pointing outside ``root`` is recorded in ``outside`` so callers say so, naming it. A link
    to a folder it is inside (a loop) is skipped, and a second link to a folder already walked is
    reported, not walked again, so the walk always ends.
    Only regular files are ever read: FIFOs, devices, sockets and broken links become "other"
    entries whose ``reason`` says what they are (a FIFO would block a reader, /dev/zero never ends).
    """
    root = Path(root)
    root_real = os.path.realpath(root)
    walked = {root_real}  # real paths of folders already listed
    entries: list[_Entry] = []

    def visit(folder: str, rel: tuple[str, ...], ancestors: frozenset[str]) -> None:
        try:
            with os.scandir(folder) as listing:
                items = sorted(listing, key=lambda item: item.name)
        except OSError as exc:
            raise DataError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None
        for item in items:
            parts = (*rel, item.name)
            source = Source("/".join(parts), item.path)
            real = os.path.realpath(item.path) if item.is_symlink() else None
            outside = real if real is not None and not _is_within(real, root_real) else None
            try:
                mode = os.stat(item.path).st_mode  # follows links
            except OSError as exc:
                reason = (f"cannot be read (a broken symbolic link to {os.readlink(item.path)})" if real is not None
                          else f"cannot be read ({exc.strerror or exc})")
                entries.append(_Entry(parts, "other", source, reason))
                continue
            if stat.S_ISDIR(mode):
                target = real or os.path.realpath(item.path)
                if real is not None and target in ancestors:
                    continue  # a loop (a link to a folder it is inside): everything in it is read already
                if real is not None and target in walked:  # plain folders cannot repeat; links can
                    entries.append(_Entry(parts, "other", source, f"{FOLDER_READ_ALREADY} ({target}); not read twice"))
                    continue
                walked.add(target)
                entries.append(_Entry(parts, "dir", source, outside=outside))
                visit(item.path, parts, ancestors | {target})
            elif stat.S_ISREG(mode):
                entries.append(_Entry(parts, "file", source, outside=outside))
            else:
                reason = not_regular_reason(mode)
                if real is not None:  # name the device or pipe the link leads to
                    reason = f"is a symbolic link to {real}, which {reason}"
                entries.append(_Entry(parts, "other", source, reason, outside))

    visit(str(root), (), frozenset({root_real}))
    return entries


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _warn_outside_links(root: Path, entries: list[_Entry]) -> None:
    """Say which symlinks lead out of the folder: they are followed (README, Safety), never silently."""
    links = [e for e in entries if e.outside is not None and e.kind != "other"]  # "other" ones are never read
    if links:
        shown = "; ".join(f"{e.source.name} -> {e.outside}" for e in links[:5]) + (" ..." if len(links) > 5 else "")
        log.warning("%s: following %d symbolic link(s) that point outside the folder: %s", root, len(links), shown)


def _folder_key(entries: list[_Entry]) -> str:
    """Digest of the folder's file list and every file's bytes (so edits invalidate the cache)."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(("/".join(entry.parts) + "\0" + entry.kind + "\0").encode("utf-8", "surrogateescape"))
        if entry.kind == "file" and _is_image_name(entry.parts[-1]):
            try:
                data = read_image_file(entry.source.path)  # bounded; never blocks on a swapped-in FIFO
            except BadImage:
                data = b"<unreadable>"  # reported when decoding; keeps the key deterministic
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()


def _strip_single_top(entries: list[_Entry]) -> list[_Entry]:
    """``mydata/cat/1.jpg`` -> ``cat/1.jpg``: drop one wrapping folder that holds only folders
    (archives usually wrap their content in one; a lone class folder holds files and is kept)."""
    tops = {e.parts[0] for e in entries if e.parts}
    if len(tops) != 1:
        return entries
    top = next(iter(tops))
    if top.lower() in SPLIT_NAMES:
        return entries
    inner = [e for e in entries if len(e.parts) > 1]
    if any(e.kind != "dir" and len(e.parts) == 2 for e in inner):
        return entries  # files directly under the top folder: it is a class folder, keep it
    return [_Entry(e.parts[1:], e.kind, e.source, e.reason, e.outside) for e in inner]


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in JUNK_NAMES or name == "__MACOSX"


def _plan(entries: list[_Entry], root: Path) -> _Plan:
    entries = [e for e in entries if e.parts and not any(_ignored(p) for p in e.parts)]
    top_dirs = sorted({e.parts[0] for e in entries if len(e.parts) > 1 or e.kind == "dir"})
    split_dirs = {d: SPLIT_NAMES[d.lower()] for d in top_dirs if d.lower() in SPLIT_NAMES}
    if split_dirs:
        others = [d for d in top_dirs if d not in split_dirs]
        if others:
            raise DataError(
                f"{root}: mixes split folders ({', '.join(sorted(split_dirs))}) with other folders "
                f"({', '.join(others[:5])}); put every class folder inside train/ (and val/, test/)"
            )
        if "train" not in split_dirs.values():
            raise DataError(f"{root}: has {', '.join(sorted(split_dirs))}/ but no train/ folder")
        if len(set(split_dirs.values())) != len(split_dirs):
            raise DataError(f"{root}: more than one folder names the same split ({', '.join(sorted(split_dirs))})")
        by_split = {split: [_Entry(e.parts[1:], e.kind, e.source, e.reason, e.outside) for e in entries if e.parts[0] == d and len(e.parts) > 1]
                    for d, split in split_dirs.items()}
    else:
        by_split = {"train": entries}

    problems: list[str] = []
    train_classes = _class_folders(by_split["train"], "train/" if split_dirs else "", problems)
    classes = sorted(train_classes)
    if not classes:
        raise DataError(f"{root}: no class folders found (expected {'train/' if split_dirs else ''}<class>/<image files>)")
    plan = _Plan(classes=classes, problems=problems)
    index = {name: i for i, name in enumerate(classes)}
    for split, split_entries in by_split.items():
        prefix = f"{next(d for d, s in split_dirs.items() if s == split)}/" if split_dirs else ""
        folders = train_classes if split == "train" else _class_folders(split_entries, prefix, problems)
        files: list[tuple[Source, int]] = []
        for name in sorted(folders):
            if name not in index:
                problems.append(f"{prefix}{name}/: class folder not present in train/ (classes come from train/)")
                continue
            for entry in folders[name]:
                if entry.kind == "other" and entry.reason is None:
                    problems.append(f"{entry.source.name}: is a link or device inside an archive; refusing to read it")
                elif entry.kind == "dir":
                    problems.append(f"{entry.source.name}: is a folder, not an image file (its name ends in {os.path.splitext(entry.parts[-1])[1]!r})")
                elif not _is_image_name(entry.parts[-1]):
                    problems.append(f"{entry.source.name}: is not an image file (extension {os.path.splitext(entry.parts[-1])[1] or 'none'!r})")
                elif entry.kind == "other":  # a FIFO, device or broken link named like an image: reported
                    files.append((replace(entry.source, refused=entry.reason), index[name]))  # with the bad images
                else:
                    files.append((entry.source, index[name]))
        plan.files[split] = files
    return plan


def _class_folders(entries: list[_Entry], prefix: str, problems: list[str]) -> dict[str, list[_Entry]]:
    """Map class folder name -> file entries under it (recursively); record empty/duplicate classes."""
    folders: dict[str, list[_Entry]] = {}
    for e in entries:
        if len(e.parts) == 1 and e.kind == "dir":
            folders.setdefault(e.parts[0], [])
        elif len(e.parts) > 1:
            folders.setdefault(e.parts[0], [])
            if e.kind != "dir" or _is_image_name(e.parts[-1]):  # a folder named x.jpg is reported
                folders[e.parts[0]].append(e)
        elif e.kind == "other" and (e.reason or "").startswith(FOLDER_READ_ALREADY):  # a class: said, not dropped
            problems.append(f"{prefix}{e.parts[0]}: {e.reason}")
        # files directly in the root are not in any class (README, LICENSE...): ignored
    by_lower: dict[str, list[str]] = {}
    for name in sorted(folders):
        by_lower.setdefault(name.lower(), []).append(name)
    for names in by_lower.values():
        if len(names) > 1:  # 'Cat' and 'cat' would be merged on case-insensitive file systems
            problems.append(f"{prefix}{names[1]}/: class name differs only in case from {prefix}{names[0]}/ (duplicate class)")
            for dup in names[1:]:
                del folders[dup]
    for name in list(folders):
        # A FIFO or broken link named like an image counts: it is then reported by name, not as "empty".
        if not any(_is_image_name(e.parts[-1]) and (e.kind == "file" or e.reason) for e in folders[name]):
            problems.append(f"{prefix}{name}/: class folder is empty (no image files)")
            del folders[name]
    return folders


# --- decoding ----------------------------------------------------------------------------------
def _decode(plan: _Plan, buffer, image_size: int | None, root: Path, skip_bad: bool) -> dict[str, ImageSet]:
    order = [(split, src, label) for split, files in plan.files.items() for src, label in files]
    results = decode_all([src for _, src, _ in order], buffer=buffer, image_size=image_size)
    kept: dict[str, tuple[list[np.ndarray], list[int], list[str]]] = {s: ([], [], []) for s in plan.files}
    for (split, src, label), result in zip(order, results):
        if isinstance(result, str):
            plan.problems.append(f"{src.name}: {result}")
            continue
        arrays, labels, names = kept[split]
        arrays.append(result)
        labels.append(label)
        names.append(src.name)
    if plan.problems and not skip_bad:
        raise DataError(_problem_message(root, plan.problems))
    shapes = Counter(a.shape for arrays, _, _ in kept.values() for a in arrays)
    if len(shapes) > 1:
        common = shapes.most_common(1)[0][0]
        odd = next(n for arrays, _, names in kept.values() for a, n in zip(arrays, names) if a.shape != common)
        odd_shape = next(a.shape for arrays, _, _ in kept.values() for a in arrays if a.shape != common)
        raise DataError(
            f"{root}: images have different sizes ({len(shapes)} sizes; most are {common[1]}x{common[0]}, "
            f"but {odd} is {odd_shape[1]}x{odd_shape[0]}); pass image_size / --image-size to resize them all"
        )
    splits: dict[str, ImageSet] = {}
    for split, (arrays, labels, names) in kept.items():
        if not arrays:
            if split == "train":
                raise DataError(f"{root}: no readable training images")
            continue
        splits[split] = ImageSet(
            images=torch.from_numpy(np.stack(arrays)),
            labels=torch.tensor(labels, dtype=torch.int64),
            classes=list(plan.classes),
            source=str(root),
            paths=names,
        )
    return splits


def _files_only(plan: _Plan, root: Path, skip_bad: bool) -> dict[str, ImageSet]:
    """The plan's files as files-only ImageSets; a file whose header does not read is a problem,
    as a failed decode is for :func:`_decode` (a corrupt body only shows when it is decoded)."""
    splits: dict[str, ImageSet] = {}
    for split, files in plan.files.items():
        labels, names = [], []
        for src, label in files:
            reason = src.refused or _header_problem(src.path)
            if reason is not None:
                plan.problems.append(f"{src.name}: {reason}")
                continue
            labels.append(label)
            names.append(src.name)
        if names:
            splits[split] = ImageSet(images=None, labels=torch.tensor(labels, dtype=torch.int64),
                                     classes=list(plan.classes), source=str(root), paths=names)
    if plan.problems and not skip_bad:
        raise DataError(_problem_message(root, plan.problems))
    if "train" not in splits:
        raise DataError(f"{root}: no readable training images")
    if plan.problems:
        _warn_skipped(root, plan.problems)
    return splits


def _header_problem(path: str) -> str | None:
    """Why ``path`` is no usable image, from its header alone (format, size limit); None when it is."""
    from PIL import Image, UnidentifiedImageError

    from resnetlab import imaging

    try:
        if os.path.getsize(path) == 0:
            return "is empty (0 bytes)"
        with Image.open(path) as image:  # reads the header only; walk_folder typed it a regular file
            imaging.check_size(image, imaging.MAX_PIXELS)
    except imaging.ImageError as exc:
        return str(exc)
    except UnidentifiedImageError:
        return "is not an image PIL can read (unknown format or corrupt header)"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"is corrupt or truncated (cannot read its header: {exc})"
    return None


def _problem_message(root: Path, problems: list[str]) -> str:
    more = f" (and {len(problems) - 1} more bad files)" if len(problems) > 1 else ""
    return f"{root}: {problems[0]}{more}; fix or remove it, or pass --skip-bad (skip_bad=True) to skip bad files"


def _warn_skipped(root: Path, problems: list[str]) -> None:
    shown = "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else "")
    log.warning("%s: skipped %d bad files/folders: %s", root, len(problems), shown)


# --- the decoded cache ---------------------------------------------------------------------------
def _cache_path(content_key: str, settings: dict, data_dir) -> Path:
    key = hashlib.sha256((content_key + json.dumps(settings, sort_keys=True)).encode()).hexdigest()[:32]
    return cache_dir(data_dir) / "decoded" / f"{key}.npz"


def _save_cache(path: Path, splits: dict[str, ImageSet], problems: list[str]) -> None:
    meta = {"classes": next(iter(splits.values())).classes, "problems": problems,
            "paths": {s: ims.paths for s, ims in splits.items()}}
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)}
    for split, ims in splits.items():
        arrays[f"{split}_images"] = ims.images.numpy()
        arrays[f"{split}_labels"] = ims.labels.numpy()
    try:
        atomic_write_with(path, lambda handle: np.savez(handle, **arrays))
    except OSError as exc:  # a read-only or full cache must not stop training
        log.warning("could not write the decoded-image cache %s (%s); the next run will decode again", path, exc)


def _load_cache(path: Path, root: Path) -> dict[str, ImageSet] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode("utf-8"))
            splits = {
                split: ImageSet(
                    images=torch.from_numpy(npz[f"{split}_images"]),
                    labels=torch.from_numpy(npz[f"{split}_labels"]),
                    classes=list(meta["classes"]),
                    source=str(root),
                    paths=paths,
                )
                for split, paths in meta["paths"].items()
            }
    except Exception as exc:  # a damaged cache is rebuilt, never trusted
        log.warning("ignoring unreadable cache %s (%s)", path, exc)
        return None
    if meta["problems"]:
        _warn_skipped(root, meta["problems"])
    log.debug("loaded decoded images from cache %s", path)
    return splits
