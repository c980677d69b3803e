"""FlowRouter over fake kernels: spares, one kernel per flow, least-recently-used retirement."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import pytest

from control.handle import KernelHandle
from control.processes import Lost
from control.router import FlowRouter, SharedRouter, each, fan_out, merge_lists
from flight_kernel.errors import KernelUnavailable
from flight_kernel.paths import ArtifactPath


class FakeKernel:
    """What the router uses of a `KernelHandle`, recording what it was asked."""

    pids = itertools.count(100)

    def __init__(self, lost: Lost | None = None, fail: bool = False) -> None:
        self.pid = next(self.pids)
        self.flow_id: int | None = None
        self.told: Lost | None = None
        self.started = self.stopped = self.retired = False
        self._lost = lost or Lost()
        self._fail = fail

    def start(self) -> None:
        if self._fail:
            raise RuntimeError("no python here")
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def adopt(self, flow_id: int, lost: Lost | None = None) -> None:
        assert self.flow_id is None, "a kernel adopts one flow"
        self.flow_id, self.told = flow_id, lost

    def retire(self) -> Lost:
        self.retired = True
        return self._lost

    def call(self, action: str, body: object = None) -> bytes:
        return f'[{{"flow_id": {self.flow_id}}}]'.encode()


class Maker:
    """The router's `make`: hands out fake kernels and keeps them."""

    def __init__(self, **kwargs: object) -> None:
        self.made: list[FakeKernel] = []
        self.kwargs = kwargs

    def __call__(self) -> KernelHandle:
        kernel = FakeKernel(**self.kwargs)  # type: ignore[arg-type]
        self.made.append(kernel)
        return cast(KernelHandle, kernel)


def fake(handle: KernelHandle) -> FakeKernel:
    return cast(FakeKernel, handle)


def wait_retired(kernel: FakeKernel, router: FlowRouter, flow_id: int) -> None:
    """Retirement runs on its own thread; taking the flow again waits for it to finish."""
    for _ in range(500):
        if kernel.retired and router.holder(flow_id) is None:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"flow {flow_id}'s kernel was not retired")


@pytest.fixture
def maker() -> Maker:
    return Maker()


@pytest.fixture
def router(maker: Maker) -> FlowRouter:
    router = FlowRouter(maker, max_kernels=2)
    router.start()
    return router


def test_start_waits_for_a_spare_that_serves_no_flow(router: FlowRouter, maker: Maker) -> None:
    assert maker.made[0].started
    assert maker.made[0].flow_id is None
    assert router.all() == []  # a spare serves no flow


def test_a_new_flow_takes_the_started_spare_and_the_next_spare_starts(
    router: FlowRouter, maker: Maker
) -> None:
    spare = maker.made[0]

    handle = fake(router.for_flow(7))

    assert handle is spare
    assert handle.flow_id == 7
    assert handle.told is None  # it never had a kernel: nothing to tell
    assert len(maker.made) == 2
    assert maker.made[1].flow_id is None


def test_a_flow_keeps_its_kernel(router: FlowRouter) -> None:
    first = router.for_flow(1)
    router.for_flow(2)

    assert router.for_flow(1) is first
    assert router.holder(1) is first
    assert router.holder(3) is None  # asking who holds a flow starts nothing


def test_concurrent_first_calls_of_one_flow_share_one_kernel(router: FlowRouter) -> None:
    with ThreadPoolExecutor(8) as pool:
        handles = list(pool.map(lambda _: router.for_flow(5), range(8)))

    assert all(h is handles[0] for h in handles)
    assert [fake(h).flow_id for h in router.all()] == [5]


def test_beyond_the_bound_the_least_recently_used_idle_kernel_retires(router: FlowRouter) -> None:
    one, two = fake(router.for_flow(1)), fake(router.for_flow(2))
    router.for_flow(1)  # two is now the least recently used

    router.for_flow(3)

    wait_retired(two, router, 2)
    assert not one.retired
    assert sorted(fake(h).flow_id or 0 for h in router.all()) == [1, 3]


def test_a_kernel_in_use_is_not_retired(router: FlowRouter) -> None:
    two = fake(router.for_flow(2))
    with router.using(1) as used:  # least recently used once 2 and 3 came, but running
        one = fake(used)
        router.for_flow(2)

        router.for_flow(3)

        wait_retired(two, router, 2)
        assert not one.retired
    assert router.holder(1) is used


def test_every_kernel_in_use_lets_the_bound_be_exceeded(router: FlowRouter) -> None:
    with router.using(1), router.using(2):
        router.for_flow(3)

        assert sorted(fake(h).flow_id or 0 for h in router.all()) == [1, 2, 3]


def test_a_kernel_is_retired_once_its_last_use_ended(router: FlowRouter) -> None:
    with router.using(1) as used, router.using(1):
        router.for_flow(2)
        router.for_flow(3)
    assert not fake(used).retired

    router.for_flow(4)  # 1 is the least recently used, and nobody uses it now

    wait_retired(fake(used), router, 1)


def test_the_first_use_of_a_new_flow_is_counted_before_any_retirement() -> None:
    maker = Maker()
    router = FlowRouter(maker, max_kernels=1)
    router.start()
    with router.using(1) as first:
        with router.using(2):  # 1 is in use: it stays, beyond the bound
            assert router.holder(1) is first
        router.for_flow(3)  # 2 is not in use any more: it goes, 1 still stays
        wait_retired(maker.made[1], router, 2)
        assert router.holder(1) is first


def test_a_retired_flow_is_told_what_it_lost_by_its_next_kernel() -> None:
    lock = ArtifactPath(1, "lock")
    maker = Maker(lost=Lost((lock,), ((1, "main"),)))
    router = FlowRouter(maker, max_kernels=1)
    router.start()
    old = fake(router.for_flow(1))
    router.for_flow(2)
    wait_retired(old, router, 1)

    new = fake(router.for_flow(1))

    assert new is not old
    assert new.told is not None
    assert new.told.report() == {
        "lost_state": ["namespace", "artifacts"],
        "lost_artifacts": ["lock"],
        "lost_namespaces": ["main"],
    }


def test_a_spare_that_cannot_start_is_unavailable_not_a_crash() -> None:
    router = FlowRouter(Maker(fail=True), max_kernels=2)
    with pytest.raises(RuntimeError, match="no python here"):
        router.start()

    with pytest.raises(KernelUnavailable, match="no kernel could be started"):
        router.for_flow(1)
    with pytest.raises(KernelUnavailable):  # the failure is not remembered as the flow's kernel
        router.for_flow(1)


def test_stop_stops_every_kernel_and_the_spare(router: FlowRouter, maker: Maker) -> None:
    router.for_flow(1)

    router.stop()

    assert all(k.stopped for k in maker.made if k.started)
    with pytest.raises(KernelUnavailable, match="shutting down"):
        router.for_flow(2)


def test_kernels_lists_the_spare_too(router: FlowRouter) -> None:
    router.for_flow(1)

    flows = [fake(h).flow_id for h in router.kernels()]

    assert flows == [1, None]


def test_fan_out_merges_every_flow_kernel(router: FlowRouter) -> None:
    router.for_flow(1)
    router.for_flow(2)

    merged = fan_out(router, lambda h: h.call("list_artifacts"), merge_lists)

    assert merged == [{"flow_id": 1}, {"flow_id": 2}]


def test_shared_router_serves_every_flow_with_one_kernel() -> None:
    kernel = FakeKernel()
    router = SharedRouter(cast(KernelHandle, kernel))

    assert router.for_flow(1) is router.for_flow(2) is router.holder(3)
    assert router.serves_every_flow
    assert each(router.all(), fake) == [kernel]
