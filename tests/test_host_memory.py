"""keep_freed_memory: glibc keeps freed large blocks in the process instead of unmapping them."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from resnetlab.engine.host_memory import resolve_keep_host_memory

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)

# In a fresh interpreter (mallopt is process-wide): touch a 256 MB block, free it, and print the
# resident-set change in MB. glibc's default unmaps it (RSS falls back); kept memory stays resident.
RSS_AFTER_FREE = """
import sys, torch
from resnetlab.engine.host_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
before = rss_mb()
block = torch.ones(64 * 2**20)  # 256 MB, written so every page is resident
del block
print(round(rss_mb() - before))
"""


def _rss_growth_after_free(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", RSS_AFTER_FREE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@glibc_only
def test_freed_blocks_stay_in_the_process_only_when_asked():
    assert _rss_growth_after_free("default") < 64  # unmapped on free
    assert _rss_growth_after_free("keep") > 200  # kept for the next pass


def test_auto_is_on_for_cpu_training_only():
    assert resolve_keep_host_memory("auto", "cpu") is True
    assert resolve_keep_host_memory("auto", "cuda") is False
    assert resolve_keep_host_memory(False, "cpu") is False
    assert resolve_keep_host_memory(True, "cuda") is True
