"""Routers: which kernel serves a flow, and fan-out over every kernel.

`SharedRouter` keeps one kernel for every flow (`KERNEL_ISOLATION=shared`, and tests that
attach a kernel). `FlowRouter` gives each flow a kernel of its own (`flow`, the default):
a flow's first call takes the started spare, whose successor starts in the background, and
beyond `KERNEL_MAX_KERNELS` the least recently used idle kernel is retired. The service
only ever asks a router; answers gathered from several kernels are merged here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from control.handle import KernelHandle
from control.processes import Lost
from flight_kernel.errors import KernelUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")
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


_pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="fan-out")


def each(handles: list[KernelHandle], call: Callable[[KernelHandle], T]) -> list[T]:
    """`call` on every handle at once (a busy kernel delays only its own answer), in order."""
    if len(handles) == 1:
        return [call(handles[0])]
    return [f.result() for f in [_pool.submit(call, h) for h in handles]]


class KernelRouter(Protocol):
    """Maps flows to kernels."""

    def for_flow(self, flow_id: int) -> KernelHandle:
        """The kernel that runs (and holds the state of) `flow_id`, started if need be."""
        ...

    def holder(self, flow_id: int) -> KernelHandle | None:
        """The kernel that holds `flow_id`'s live state now, if any (none is started)."""
        ...

    def using(self, flow_id: int) -> contextlib.AbstractContextManager[KernelHandle]:
        """`for_flow`, and the kernel is not retired until the block ends (executions)."""
        ...

    def all(self) -> list[KernelHandle]:
        """Every kernel that serves flows, for calls that concern every flow."""
        ...

    def kernels(self) -> list[KernelHandle]:
        """Every kernel, spares too (for `/health` and `/memory`)."""
        ...

    @property
    def serves_every_flow(self) -> bool:
        """Whether `all()` holds the state of every flow (no flow lives in the store only)."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def fan_out(router: KernelRouter, call: Callable[[KernelHandle], bytes], merge: Merge) -> Any:
    """One call on every kernel that serves flows, the JSON answers merged."""
    return merge([json.loads(raw) for raw in each(router.all(), call)])


class SharedRouter:
    """One kernel for every flow."""

    serves_every_flow = True

    def __init__(self, shared: KernelHandle) -> None:
        self._shared = shared

    def for_flow(self, flow_id: int) -> KernelHandle:
        return self._shared

    def holder(self, flow_id: int) -> KernelHandle | None:
        return self._shared

    @contextlib.contextmanager
    def using(self, flow_id: int) -> Iterator[KernelHandle]:
        yield self._shared

    def all(self) -> list[KernelHandle]:
        return [self._shared]

    def kernels(self) -> list[KernelHandle]:
        return [self._shared]

    def start(self) -> None:
        self._shared.start()

    def stop(self) -> None:
        self._shared.stop()


class FlowRouter:
    """A kernel per flow, taken from a started spare; the least recently used idle one is
    retired beyond `max_kernels`. `make()` builds a (not started) spare kernel."""

    serves_every_flow = False

    def __init__(self, make: Callable[[], KernelHandle], max_kernels: int) -> None:
        self._make = make
        self._max = max_kernels
        self._lock = threading.Lock()
        self._flows: OrderedDict[int, KernelHandle] = OrderedDict()  # least recent first
        self._adopting: dict[int, Future[KernelHandle]] = {}
        self._lost: dict[int, Lost] = {}  # retired flows: what their next answer tells
        self._retiring: dict[int, Future[None]] = {}
        self._leases: dict[int, int] = {}  # flows whose kernel a caller uses (an execution)
        self._spare: tuple[KernelHandle, Future[None]] | None = None
        self._stopping = False

    # -- spares ----------------------------------------------------------------------------

    def _start_spare(self) -> tuple[KernelHandle, Future[None]]:
        """A new spare, and the start it is going through in the background."""
        handle = self._make()
        started: Future[None] = Future()

        def start() -> None:
            try:
                handle.start()
            except BaseException as exc:
                started.set_exception(exc)
                return
            started.set_result(None)

        threading.Thread(target=start, name="spare-kernel", daemon=True).start()
        return handle, started

    def _take_spare(self) -> KernelHandle:
        """The started spare (waiting for it if it still starts); the next one starts now."""
        with self._lock:
            if self._stopping:
                raise KernelUnavailable("the service is shutting down")
            handle, started = self._spare or self._start_spare()
            self._spare = self._start_spare()
        try:
            started.result()
        except Exception as exc:
            raise KernelUnavailable(f"no kernel could be started for the flow: {exc}") from None
        return handle

    # -- flows -----------------------------------------------------------------------------

    def for_flow(self, flow_id: int) -> KernelHandle:
        return self._acquire(flow_id, lease=False)

    @contextlib.contextmanager
    def using(self, flow_id: int) -> Iterator[KernelHandle]:
        handle = self._acquire(flow_id, lease=True)
        try:
            yield handle
        finally:
            with self._lock:
                self._leases[flow_id] -= 1
                if not self._leases[flow_id]:
                    del self._leases[flow_id]

    def _acquire(self, flow_id: int, lease: bool) -> KernelHandle:
        """The flow's kernel (adopting the spare for a new flow); with `lease`, counted as in
        use, under the same lock, so that it is not retired before the caller is done."""
        with self._lock:
            handle = self._flows.get(flow_id)
            if handle is not None:
                self._flows.move_to_end(flow_id)
                if lease:
                    self._leases[flow_id] = self._leases.get(flow_id, 0) + 1
                return handle
            pending = self._adopting.get(flow_id)
            if pending is None:
                mine: Future[KernelHandle] = Future()
                self._adopting[flow_id] = mine
        if pending is not None:  # another call of this flow is taking the spare
            pending.result()
            return self._acquire(flow_id, lease)
        try:
            with self._lock:
                retiring = self._retiring.get(flow_id)
            if retiring is not None:  # its artifacts reach the store before the next kernel
                retiring.result()
            handle = self._take_spare()
            with self._lock:
                lost = self._lost.pop(flow_id, None)
            handle.adopt(flow_id, lost)
        except BaseException as exc:
            with self._lock:
                del self._adopting[flow_id]
            mine.set_exception(exc)
            raise
        with self._lock:
            self._flows[flow_id] = handle
            del self._adopting[flow_id]
            if lease:
                self._leases[flow_id] = self._leases.get(flow_id, 0) + 1
            retired = self._to_retire(keep=flow_id)
        mine.set_result(handle)
        for old_flow, old in retired:
            threading.Thread(
                target=self._retire, args=(old_flow, old), name="retire-kernel", daemon=True
            ).start()
        return handle

    def _to_retire(self, keep: int) -> list[tuple[int, KernelHandle]]:
        """The least recently used kernels beyond the bound that no caller uses, out of the
        map (lock held); never `keep`, the flow that just got its kernel."""
        retired = []
        for flow_id, handle in list(self._flows.items()):
            if len(self._flows) <= self._max:
                break
            if flow_id != keep and not self._leases.get(flow_id):
                del self._flows[flow_id]
                self._retiring[flow_id] = Future()
                retired.append((flow_id, handle))
        if len(self._flows) > self._max:
            logger.info(
                "%s flow kernels run (KERNEL_MAX_KERNELS=%s): none beyond it is idle",
                len(self._flows),
                self._max,
            )
        return retired

    def _retire(self, flow_id: int, handle: KernelHandle) -> None:
        lost = Lost()
        try:
            lost = handle.retire().of(flow_id)
        finally:
            report = lost.report()
            logger.info(
                "retired the kernel of flow %s (least recently used)%s%s",
                flow_id,
                f"; not persisted, so lost: {', '.join(report['lost_artifacts'])}"
                if lost.artifacts
                else "",
                f"; namespaces dropped: {', '.join(report['lost_namespaces'])}"
                if lost.namespaces
                else "",
            )
            with self._lock:
                self._lost[flow_id] = self._lost.get(flow_id, Lost()) + lost
                self._retiring.pop(flow_id).set_result(None)

    def holder(self, flow_id: int) -> KernelHandle | None:
        with self._lock:
            return self._flows.get(flow_id)

    def all(self) -> list[KernelHandle]:
        with self._lock:
            return list(self._flows.values())

    def kernels(self) -> list[KernelHandle]:
        with self._lock:
            spare = self._spare
        found = self.all()
        if spare is not None:  # starting, perhaps: it says so itself
            found.append(spare[0])
        return found

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the first spare and wait for it: a kernel that cannot start stops start-up."""
        with self._lock:
            self._spare = self._start_spare()
            _, started = self._spare
        started.result()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            handles = list(self._flows.values())
            spare = self._spare
        if spare is not None:
            handle, started = spare
            with contextlib.suppress(Exception):  # one that never started needs no stop
                started.result()
                handles.append(handle)
        each(handles, lambda h: h.stop())
