"""Shared test fixtures.

Real-data tests use ``../shared/data/cifar10-jpeg-train.tar.gz`` (beside the repository) and skip
cleanly when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
CIFAR_JPEG_ARCHIVE = SHARED_DATA / "cifar10-jpeg-train.tar.gz"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never let a test read or write the user's real cache (~/.cache/resnetlab)."""
    cache = tmp_path_factory.getbasetemp() / "resnetlab-cache"
    monkeypatch.setenv("RESNETLAB_CACHE", str(cache))
    yield


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests are small; one thread each avoids oversubscribing CI's 2 cores (subprocess tests run beside pytest).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def cifar_jpeg_archive() -> Path:
    if not CIFAR_JPEG_ARCHIVE.exists():
        pytest.skip(f"real-data test: {CIFAR_JPEG_ARCHIVE} is absent")
    return CIFAR_JPEG_ARCHIVE
