"""Where downloaded and decoded data lives on disk, and content digests used as cache keys."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_ENV = "RESNETLAB_CACHE"


def cache_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data cache: ``data_dir`` if given, else ``$RESNETLAB_CACHE``, else ``~/.cache/resnetlab``."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
    elif os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV]).expanduser()
    else:
        root = Path.home() / ".cache" / "resnetlab"
    return root


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes, read in chunks (archives can be large)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
