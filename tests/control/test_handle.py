"""KernelHandle and LocalKernelProcess against purpose-built tiny Flight servers.

Each server does one thing: hangs, loses the call, answers for someone else. The handle's
timeout, death and "never connected" paths run in-process; only the start-up checks of
`LocalKernelProcess` spawn a (tiny, non-kernel) child.
"""

from __future__ import annotations

import json
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.flight as flight
import pytest

from control.connection import KernelConnection
from control.handle import KernelHandle
from control.processes import (
    AttachedKernel,
    Death,
    KernelStatus,
    LocalKernelProcess,
    Lost,
    StartFailed,
)
from flight_kernel.channel import ChannelServer
from flight_kernel.errors import ConnectionLost, KernelUnavailable
from flight_kernel.requests import ExecuteRequest, InterruptRequest
from flight_kernel.results import ErrorKind
from flight_kernel.settings import Settings
from flight_kernel.store import Store
from tests.helpers import free_port, poll

Action = Callable[[dict[str, Any]], Any]


class ScriptedServer(flight.FlightServerBase):  # type: ignore[misc]
    """A Flight server whose actions are the given functions of the decoded body."""

    def __init__(self, actions: dict[str, Action]) -> None:
        super().__init__("grpc://127.0.0.1:0")
        self._actions = actions

    def do_action(self, context: Any, action: flight.Action) -> list[flight.Result]:
        body = json.loads(action.body.to_pybytes() or b"{}")
        return [flight.Result(json.dumps(self._actions[action.type](body)).encode())]

    @property
    def location(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"


class FakeProcess:
    """A `KernelProcess` over a scripted server: `kill` records why, `death` reports it."""

    def __init__(self, location: str, death: Death | None = None) -> None:
        self._conn = KernelConnection(location)
        self._death = death
        self.kills: list[tuple[str, ErrorKind]] = []
        self.spooled: dict[str, tuple[str, str]] = {}  # what each execution printed

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self._conn.close()

    def connection(self, wait: bool = True) -> tuple[int, KernelConnection]:
        return 1, self._conn

    def kill(
        self, generation: int, reason: str, kind: ErrorKind, culprits: frozenset[str] = frozenset()
    ) -> None:
        self.kills.append((reason, kind))
        self._death = Death(-9, reason, kind, culprits)

    def death(self, generation: int, timeout: float) -> Death | None:
        return self._death

    def starts(self, generation: int) -> int:
        return 0

    def started(self, generation: int, execution_id: str, since: int) -> bool:
        return True

    def adopt(self, flow_id: int) -> None:
        pass

    def retire(self) -> Lost:
        return Lost()

    def printed(self, generation: int, execution_id: str) -> tuple[str, str]:
        return self.spooled.get(execution_id, ("", ""))

    def status(self) -> KernelStatus:
        return KernelStatus("healthy", 0, None)


SETTINGS = Settings(flight_port=0, interrupt_grace_s=0.05)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the end of the test, so that a hanging handler lets its server shut down."""
    event = threading.Event()
    yield event
    event.set()


def _request(**fields: Any) -> ExecuteRequest:
    return ExecuteRequest(node_id="n1", code="x = 1", flow_id=3, **fields)


def test_an_execution_that_outlives_timeout_and_grace_kills_the_kernel(release):
    def hang(body: dict[str, Any]) -> Any:
        release.wait(30)
        return {}

    with ScriptedServer({"execute": hang}) as server:
        process = FakeProcess(server.location)
        result = json.loads(KernelHandle(process, SETTINGS).execute(_request(timeout_s=0.05)))
        release.set()
        process.stop()

    assert [kind for _, kind in process.kills] == [ErrorKind.TIMEOUT]
    assert result["success"] is False
    assert result["error"].startswith("Timeout: execution exceeded timeout_s=0.05")
    assert result["error_kind"] == "timeout"
    assert result["kernel_restarted"] is True
    assert (result["flow_id"], result["node_id"]) == (3, "n1")
    assert result["execution_id"]  # minted by the handle, so the death report names it


def test_a_call_lost_to_a_dead_kernel_is_a_kernel_died_result():
    def lost(body: dict[str, Any]) -> Any:
        raise flight.FlightUnavailableError("socket closed")

    with ScriptedServer({"execute": lost}) as server:
        process = FakeProcess(server.location, death=Death(-11))
        raw = KernelHandle(process, SETTINGS).execute(_request(execution_id="e-7"))
        process.stop()

    result = json.loads(raw)
    assert result["error"].startswith("KernelDied: the kernel process was killed by SIGSEGV")
    assert "(segmentation fault)" in result["error"]
    assert result["error_kind"] == "kernel_died"
    assert result["exit_code"] == -11
    assert result["execution_id"] == "e-7"
    assert process.kills == []


def test_a_lost_call_without_a_known_death_is_unavailable_not_a_result():
    def lost(body: dict[str, Any]) -> Any:
        raise flight.FlightUnavailableError("socket closed")

    with ScriptedServer({"execute": lost}) as server:
        handle = KernelHandle(AttachedKernel(KernelConnection(server.location)), SETTINGS)
        with pytest.raises(KernelUnavailable, match="stopped answering"):
            handle.execute(_request())
        handle.stop()


def test_a_kernel_never_connected_is_connection_lost():
    handle = KernelHandle(
        AttachedKernel(KernelConnection(f"grpc://127.0.0.1:{free_port()}")), SETTINGS
    )
    with pytest.raises(ConnectionLost):
        handle.call("list_artifacts", {}, wait=False)
    handle.stop()


def test_an_interrupt_that_is_ignored_escalates_to_a_kill():
    running = [{"execution_id": "e1", "flow_id": 1, "node_id": "n"}]
    actions: dict[str, Action] = {
        "interrupt": lambda body: {"interrupted": running},
        "health": lambda body: {"running": running},
    }
    with ScriptedServer(actions) as server:
        process = FakeProcess(server.location)
        answer = json.loads(KernelHandle(process, SETTINGS).interrupt(InterruptRequest()))
        poll(lambda: process.kills, timeout=10, what="the escalation to kill the kernel")
        process.stop()

    assert answer == {"interrupted": running}
    [(reason, kind)] = process.kills
    assert kind == ErrorKind.INTERRUPTED
    assert reason.startswith("Interrupted: the execution ignored the interrupt")


def test_a_stopped_handle_escalates_nothing():
    asked = threading.Event()

    def health(body: dict[str, Any]) -> Any:
        asked.set()
        return {"running": running}

    running = [{"execution_id": "e1", "flow_id": 1, "node_id": "n"}]
    actions: dict[str, Action] = {
        "interrupt": lambda body: {"interrupted": running},
        "health": health,
    }
    with ScriptedServer(actions) as server:
        process = FakeProcess(server.location)
        handle = KernelHandle(process, SETTINGS)
        handle.interrupt(InterruptRequest())
        pending = [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
        handle.stop()
        for timer in pending:  # cancelled: each ends without running its check
            timer.join(10)

    assert not asked.is_set()
    assert process.kills == []


def test_an_interrupt_that_lands_does_not_kill():
    done = threading.Event()

    def health(body: dict[str, Any]) -> Any:
        done.set()
        return {"running": []}

    actions: dict[str, Action] = {
        "interrupt": lambda body: {"interrupted": [{"execution_id": "e1"}]},
        "health": health,
    }
    with ScriptedServer(actions) as server:
        process = FakeProcess(server.location)
        KernelHandle(process, SETTINGS).interrupt(InterruptRequest(flow_id=1))
        poll(done.is_set, timeout=10, what="the escalation check")
        for timer in threading.enumerate():  # let the check finish deciding
            if isinstance(timer, threading.Timer):
                timer.join(10)
        process.stop()
    assert process.kills == []


# -- LocalKernelProcess: what it starts must prove it is the kernel it started ----------

ANNOUNCER = textwrap.dedent(
    """
    import json, os, sys, time
    message = json.loads(sys.argv[1])
    message.setdefault("pid", os.getpid())
    message.setdefault("kernel_id", os.environ["KERNEL_ID"])
    with os.fdopen(int(os.environ["KERNEL_ANNOUNCE_FD"]), "w") as pipe:
        pipe.write(json.dumps(message) + "\\n")
    time.sleep(60)
    """
)


def _start(command: list[str], **settings: Any) -> StartFailed:
    store = Store.private()
    process = LocalKernelProcess(Settings(flight_port=0, **settings), store, command=command)
    with pytest.raises(StartFailed) as failure:
        process.start()
    process.stop()
    return failure.value


def test_a_kernel_that_exits_while_starting_is_reported_with_its_exit_code():
    failure = _start([sys.executable, "-c", "raise SystemExit(4)"])
    assert "exited with code 4 while starting" in str(failure)


def test_a_kernel_that_never_announces_itself_is_refused():
    failure = _start([sys.executable, "-c", "import time; time.sleep(60)"], start_timeout_s=0.2)
    assert "did not announce itself in time" in str(failure)


def test_a_kernel_that_cannot_listen_says_why():
    message = json.dumps({"error": "cannot listen on Flight port 8815: address in use"})
    failure = _start([sys.executable, "-c", ANNOUNCER, message])
    assert str(failure) == "cannot listen on Flight port 8815: address in use"


def test_an_announcement_from_another_pid_is_refused():
    failure = _start([sys.executable, "-c", ANNOUNCER, json.dumps({"pid": 1})])
    assert "announced itself as pid 1" in str(failure)


def test_a_channel_answered_by_someone_else_is_refused():
    answer = json.dumps({"kernel_id": "someone-else", "kernel_pid": 4242}).encode()
    other = ChannelServer(lambda name, body, send: answer, None)
    announced = {"location": "grpc://127.0.0.1:1", "channel": other.path}
    try:
        failure = _start([sys.executable, "-c", ANNOUNCER, json.dumps(announced)])
    finally:
        other.close()
    assert "is answered by another process (pid 4242)" in str(failure)


def test_an_announcement_without_a_channel_is_refused():
    failure = _start([sys.executable, "-c", ANNOUNCER, json.dumps({"location": "grpc://x:1"})])
    assert "announced no channel" in str(failure)
