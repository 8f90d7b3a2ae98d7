"""Reading a user's file only when it is a regular file, and never more than a set number of bytes.

A name like ``x.jpg`` can be a FIFO (``read()`` waits for a writer that never comes), a link to
``/dev/zero`` (``read()`` never ends: the process grows until it is killed) or a device. Every
reader of user-named files goes through :func:`read_regular_file`, which

- checks the type with ``stat`` before opening, so no device is opened at all;
- opens with ``O_NONBLOCK`` and checks the type again on the open descriptor, so a file swapped
  for a FIFO between the two steps can neither block the open nor be read;
- reads at most ``max_bytes`` (+1 to notice a file that grew, or a special file whose size lies).
"""

from __future__ import annotations

import os
import stat


class FileRefused(Exception):
    """A file that was not read; ``str()`` says why, without the file name (callers prefix it)."""


class FileTooLarge(FileRefused):
    """A regular file holding more than the bytes allowed."""


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """'a FIFO (named pipe)', 'a character device'... for an ``st_mode`` that is not a regular file."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_regular_reason(mode: int) -> str:
    return f"is {file_kind(mode)}, not a regular file"


def _size(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n:,} bytes"


def read_regular_file(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of the regular file at ``path`` (symlinks followed), at most ``max_bytes`` of them.

    Raises :class:`FileRefused` for anything else: a FIFO, device, socket or folder, a file larger
    than ``max_bytes``, or one the system cannot open.
    """
    try:
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):
            raise FileRefused(not_regular_reason(before.st_mode))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise FileRefused(f"cannot be read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb", buffering=0) as handle:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):  # replaced between the stat and the open
            raise FileRefused(not_regular_reason(opened.st_mode))
        if opened.st_size > max_bytes:
            raise FileTooLarge(f"is {_size(opened.st_size)}, over the limit of {_size(max_bytes)} for one file")
        chunks, total = [], 0
        try:
            while total <= max_bytes:
                chunk = handle.read(min(1 << 20, max_bytes + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except OSError as exc:
            raise FileRefused(f"cannot be read ({exc.strerror or exc})") from None
        if total > max_bytes:  # it grew while being read, or is a special file that reports size 0
            raise FileTooLarge(f"holds more than {_size(max_bytes)}, the limit for one file")
    return b"".join(chunks)
