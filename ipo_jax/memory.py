"""What this host can hold: its memory (`host_memory_bytes`, the cgroup's limit when lower) and
byte counts as text (`format_bytes`). Size checks that run before a stage loads or writes
anything (the training batch, the sampler's KV cache) compare against it."""

from __future__ import annotations

import os
from pathlib import Path


def host_memory_bytes() -> int:
    """This host's memory: physical memory, or the cgroup (v2 or v1) limit when that is lower."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            memory = min(memory, int(text))
    return memory


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'; 5 * 2**30 -> '5 GiB'."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


__all__ = ["format_bytes", "host_memory_bytes"]
