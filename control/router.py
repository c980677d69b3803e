"""`KernelRouter`: which kernel serves a flow, and fan-out over every kernel.

Today one kernel serves every flow; the routes only ever ask the router, so kernels per
flow change this module, not the routes. Answers gathered from several kernels are merged
here, in one place.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from control.handle import KernelHandle

Merge = Callable[[list[Any]], Any]


def merge_lists(answers: list[Any]) -> list[Any]:
    """Listings: every kernel's entries, in kernel order."""
    return [entry for answer in answers for entry in answer]


def merge_dicts_of_lists(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Clears and interrupts: lists concatenated key by key, other values from the first."""
    merged: dict[str, Any] = {}
    for answer in answers:
        for key, value in answer.items():
            if isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            else:
                merged.setdefault(key, value)
    return merged


class KernelRouter:
    """Maps flows to kernels."""

    def __init__(self, shared: KernelHandle) -> None:
        self._shared = shared

    def for_flow(self, flow_id: int) -> KernelHandle:
        """The kernel that runs (and holds the state of) `flow_id`."""
        return self._shared

    def all(self) -> list[KernelHandle]:
        """Every kernel, for calls that concern every flow."""
        return [self._shared]

    def start(self) -> None:
        for handle in self.all():
            handle.start()

    def stop(self) -> None:
        for handle in self.all():
            handle.stop()

    def fan_out(self, call: Callable[[KernelHandle], bytes], merge: Merge) -> Any:
        """One call on every kernel, the JSON answers merged."""
        return merge([json.loads(call(h)) for h in self.all()])
