"""What running executions printed, in shared memory, for the supervisor to read after the
kernel died.

A kernel that dies by itself (`os._exit`, a segfault, an OOM kill) cannot be asked what its
executions printed, and the answer must still carry it (SPEC §3). So each stream of a running
execution that prints is mirrored into a file of a spool directory the supervisor made for
that kernel (under `/dev/shm`: page cache, no disk): a memory-mapped, sparse file of the
stream's cap, written with memory copies (no system call per `print`), its length in a
header updated after the bytes. The file is created on the stream's first write (code that
prints nothing pays nothing) and removed when the execution ends; after a death the
supervisor reads those left.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct

_HEADER = struct.Struct("<QQ")  # bytes kept, bytes dropped beyond the cap
STREAMS = ("stdout", "stderr")


def _file(directory: str, execution_id: str, stream: str) -> str:
    return os.path.join(directory, f"{execution_id}.{stream}")


class SpoolFile:
    """One stream of one execution: the first `limit` bytes it printed."""

    def __init__(self, directory: str, execution_id: str, stream: str, limit: int) -> None:
        self.path = _file(directory, execution_id, stream)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, _HEADER.size + limit)  # sparse: only what is written takes memory
            self._map = mmap.mmap(fd, _HEADER.size + limit)
        finally:
            os.close(fd)
        self._size = 0

    def write(self, data: bytes, dropped: int) -> None:
        """Append `data` (which fits), and say how much was dropped so far (lock held)."""
        start = _HEADER.size + self._size
        self._map[start : start + len(data)] = data
        self._size += len(data)
        _HEADER.pack_into(self._map, 0, self._size, dropped)

    def close(self) -> None:
        self._map.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)


def marker(dropped: int, limit: int) -> str:
    """The line that ends a stream capped at `limit` bytes."""
    return f"\n[output truncated: {dropped} bytes dropped beyond the {limit}-byte limit]\n"


def read(directory: str, execution_id: str, limit: int) -> tuple[str, str]:
    """What an execution of a dead kernel printed: (stdout, stderr), "" for a stream it never
    wrote to; a capped stream ends with the same marker as in a live answer."""
    found = []
    for stream in STREAMS:
        try:
            with open(_file(directory, execution_id, stream), "rb") as f:
                head = f.read(_HEADER.size)
                size, dropped = _HEADER.unpack(head) if len(head) == _HEADER.size else (0, 0)
                text = f.read(size).decode("utf-8", "replace")
        except FileNotFoundError:
            text, dropped = "", 0
        if dropped:
            text += marker(dropped, limit)
        found.append(text)
    return found[0], found[1]
