"""The figures of the benchmark issue, each measured against its baseline in the same run.

Every function takes the running processes (`Env`) and a `Config` and returns `Result`s;
the service is the real `kernel-runtime serve` (see `harness.Service`).
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.flows import flows
from benchmarks.latency import concurrency, latency
from benchmarks.memory import artifact, leak, memory, persist
from benchmarks.model import CONFIGS, TIMES, Config, Env, Result
from benchmarks.notebook import namespace, streaming
from benchmarks.throughput import passthrough, read, transfer

__all__ = ["CONFIGS", "FIGURES", "ORDER", "TIMES", "Config", "Env", "Result"]

FIGURES: dict[str, Callable[[Env, Config], list[Result]]] = {
    "leak": leak,  # 9: first, on a fresh kernel, before big tables come and go
    "transfer": transfer,  # 1, 2
    "passthrough": passthrough,  # 3
    "latency": latency,  # 4, 5
    "concurrency": concurrency,  # 6, 6b
    "memory": memory,  # 7, 7b
    "artifact": artifact,  # 8
    "read": read,  # 10
    "persist": persist,  # 11
    "namespace": namespace,  # 14: notebook mode, a named namespace against a fresh one
    "streaming": streaming,  # 15, 15 max: notebook mode, stdout events of a streaming /execute
    "flows": flows,  # 12, 13, 13b: on a service of their own, a kernel per flow
}

ORDER = [
    "1",
    "2",
    "3",
    "4",
    "4 p99",
    "5",
    "6",
    "6b",
    "7",
    "7b",
    "8",
    "9",
    "10",
    "11",
    "12",
    "13",
    "13b",
    "14",
    "15",
    "15 max",
]
