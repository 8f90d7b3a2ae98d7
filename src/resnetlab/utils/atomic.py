"""Write files so that a crash, a full disk or a signal never leaves a half-written file behind.

The recipe: write to a temporary file in the same directory, flush and fsync it, rename it over
the destination (atomic on POSIX), then fsync the directory so the rename itself is durable.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The writer's pid is in the name, so a later save can tell a temporary left by a killed
        # process (removed: remove_stale_temporaries) from one still being written.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _with_destination(exc, path) from exc
    # mkstemp creates 0600; give the file the permissions an ordinary open() would (0666 & ~umask).
    os.chmod(tmp_name, 0o666 & ~_current_umask())
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        storage = _storage_error(exc) if isinstance(exc, (OSError, RuntimeError)) else None
        if storage is not None and (storage is not exc or storage.filename in (None, tmp_name)):
            raise _with_destination(storage, path) from exc
        raise
    _fsync_dir(path.parent)


def _storage_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: itself, or the one torch.save wraps into a RuntimeError on a full disk."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _with_destination(exc: OSError, path: Path) -> OSError:
    """The same error naming the file the user asked for, not our temporary (the CLI prints it in one line)."""
    return type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


_TEMPORARY = re.compile(r"^\..+?(?:\.(?P<pid>\d+))?\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``.NAME.PID.XXXXXXXX.tmp`` files a writer killed mid-save left in ``directory``.

    A temporary whose writer is still running is kept. Returns the removed paths.
    """
    directory = Path(directory)
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = _TEMPORARY.match(name)
        if match is None or (match.group("pid") and _alive(int(match.group("pid")))):
            continue
        path = directory / name
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            if path.is_file() and not path.is_symlink():
                path.unlink()
                removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process (or a number no process can have): leave its file alone
    return True


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | os.PathLike, writer: Callable[[IO], None]) -> None:
    """Call ``writer(handle)`` on a temporary file that replaces ``path`` only if it returns."""
    with atomic_open(path, "wb") as handle:
        writer(handle)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows fsync on a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_output_path(output: str | os.PathLike, protected: Iterable[str | os.PathLike], option: str = "--output",
                      example: str = "out.json", label: str | None = None) -> Path:
    """Refuse an output file that is an existing directory or one of the ``protected`` files
    (those the model being used is read from: writing there would destroy it). Returns ``output``.

    ``label`` names the option in the message when ``output`` is a file derived from it.
    """
    from resnetlab.errors import ConfigError

    output = Path(output)
    label = label or f"{option} {output}"
    if output.is_dir():
        raise ConfigError(f"{label}: {output} is a directory; give a file name, e.g. {output / example}")
    for path in protected:
        if _same_file(output, Path(path)):
            raise ConfigError(f"{label}: refusing to write over {path}, which the model is read from; choose another name")
    return output


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)  # also through symlinks and hard links
    return a.resolve() == b.resolve()
