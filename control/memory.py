"""`/memory`: what the container uses and may use (cgroup v2 or v1), the store, and what
each kernel costs.

A kernel's `rss_bytes` counts the shared pages of its libraries and of the store files it
maps; `uss_bytes` (private pages only, from `/proc/<pid>/smaps_rollup`) is what one more
kernel really costs.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

CGROUP = "/sys/fs/cgroup"
NO_LIMIT = 1 << 60  # cgroup v1 says "no limit" with a number near 2^63


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            raw = f.read().strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None  # v2 writes "max" for no limit


def cgroup_memory(root: str = CGROUP) -> tuple[int | None, int]:
    """(bytes in use, limit in bytes; 0 when there is none) of this container's cgroup."""
    if os.path.exists(os.path.join(root, "memory.current")):  # v2
        used = _read_int(os.path.join(root, "memory.current"))
        limit = _read_int(os.path.join(root, "memory.max")) or 0
        return used, limit
    v1 = os.path.join(root, "memory")
    used = _read_int(os.path.join(v1, "memory.usage_in_bytes"))
    limit = _read_int(os.path.join(v1, "memory.limit_in_bytes")) or 0
    return used, 0 if limit >= NO_LIMIT else limit


def _meminfo() -> dict[str, int]:
    found = {}
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            found[key] = int(rest.split()[0]) * 1024
    return found


def process_memory(pid: int) -> tuple[int, int]:
    """(RSS, USS) of a process in bytes; (0, 0) when it is gone."""
    fields: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Private_Clean", "Private_Dirty"):
                fields[key] = int(rest.split()[0]) * 1024
    return fields.get("Rss", 0), fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)


def report(store_bytes: int, kernels: list[tuple[int | None, int | None]]) -> dict[str, Any]:
    """The `/memory` body; `kernels` holds (flow_id, pid) pairs."""
    used, limit = cgroup_memory()
    info = _meminfo()
    if used is None:  # no cgroup accounting: the machine's
        used = info.get("MemTotal", 0) - info.get("MemAvailable", 0)
    total = limit or info.get("MemTotal", 0)
    rows = []
    for flow_id, pid in kernels:
        if pid is None:
            continue
        rss, uss = process_memory(pid)
        rows.append({"flow_id": flow_id, "pid": pid, "rss_bytes": rss, "uss_bytes": uss})
    return {
        "used_bytes": used,
        "limit_bytes": limit,
        "usage_percent": round(100.0 * used / total, 2) if total else 0.0,
        "store_bytes": store_bytes,
        "kernels": rows,
    }
