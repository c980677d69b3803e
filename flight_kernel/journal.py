"""Which executions a kernel started: a ring of hashes in a shared memory-mapped file.

The kernel marks each execution as it starts (a memory write, no system call); when the
kernel dies, its parent looks there to tell an execution that never ran (safe to send to the
next kernel) from one that died with it. The file outlives the kernel's death.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import tempfile
import threading

SLOTS = 8192
_DIGEST = 16
_HEADER = struct.Struct("<Q")  # how many starts were marked so far
SIZE = _HEADER.size + SLOTS * _DIGEST


def _digest(execution_id: str) -> bytes:
    return hashlib.blake2b(execution_id.encode(), digest_size=_DIGEST).digest()


class StartJournal:
    """The ring, over a file descriptor that parent and kernel share."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, SIZE)
        self._lock = threading.Lock()

    @classmethod
    def create(cls) -> StartJournal:
        """A new, empty journal in a file that exists only as the descriptor."""
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="kernel-journal-", dir=directory)
        os.unlink(path)
        os.ftruncate(fd, SIZE)
        return cls(fd)

    def count(self) -> int:
        """How many starts were marked so far."""
        (value,) = _HEADER.unpack_from(self._map, 0)
        return int(value)

    def mark(self, execution_id: str) -> None:
        """The kernel: this execution starts now."""
        digest = _digest(execution_id)
        with self._lock:
            n = self.count()
            offset = _HEADER.size + (n % SLOTS) * _DIGEST
            self._map[offset : offset + _DIGEST] = digest
            _HEADER.pack_into(self._map, 0, n + 1)  # after the slot: a reader sees it whole

    def started_since(self, execution_id: str, since: int) -> bool:
        """Whether `execution_id` was marked after `count()` was `since`; True when the ring
        has wrapped since then and cannot tell (the safe answer)."""
        end = self.count()
        if end - since > SLOTS:
            return True
        digest = _digest(execution_id)
        for n in range(since, end):
            offset = _HEADER.size + (n % SLOTS) * _DIGEST
            if self._map[offset : offset + _DIGEST] == digest:
                return True
        return False

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)
