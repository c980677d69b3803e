"""The private channel: `ChannelServer` (kernel side) and `ChannelConnection` (control side)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from control.connection import ChannelConnection
from flight_kernel.channel import ChannelServer
from flight_kernel.errors import (
    ConnectionLost,
    DeadlineExceeded,
    InvalidRequest,
    KernelError,
    NotFound,
)

NOWHERE = "grpc://127.0.0.1:1"  # the data calls' Flight location: unused here
release = threading.Event()


def handler(action: str, body: bytes, send: Callable[[bytes], None]) -> bytes:
    args = json.loads(body)
    if action == "echo":
        return json.dumps({"echo": args}).encode()
    if action == "count":  # events before the answer, as a streaming execution sends them
        for i in range(args["to"]):
            send(json.dumps({"event": "stdout", "text": str(i)}).encode())
        return b'"counted"'
    if action == "missing":
        raise NotFound("nothing stored at tables/x (tables: none)")
    if action == "wait":
        release.wait(10)
        return b'"released"'
    if action == "bug":
        raise ZeroDivisionError("division by zero")
    raise InvalidRequest(f"unknown action {action!r}")


@pytest.fixture
def server() -> Iterator[ChannelServer]:
    release.clear()
    served = ChannelServer(handler, token="sesame")
    yield served
    release.set()
    served.close()


@pytest.fixture
def conn(server: ChannelServer) -> Iterator[ChannelConnection]:
    connection = ChannelConnection(server.path, NOWHERE, token="sesame")
    yield connection
    connection.close()


def test_a_call_answers_the_raw_json_result(conn: ChannelConnection) -> None:
    assert json.loads(conn.call("echo", {"code": "x = 1", "n": [1, 2]})) == {
        "echo": {"code": "x = 1", "n": [1, 2]}
    }


def test_events_before_an_answer_go_to_on_event_in_order(conn: ChannelConnection) -> None:
    told: list[bytes] = []

    answer = conn.call("count", {"to": 3}, on_event=told.append)

    assert answer == b'"counted"'
    assert [json.loads(e)["text"] for e in told] == ["0", "1", "2"]
    assert conn.call("echo", {"a": 1}) == b'{"echo": {"a": 1}}'  # the connection is in step


def test_events_nobody_asked_for_are_skipped(conn: ChannelConnection) -> None:
    assert conn.call("count", {"to": 2}) == b'"counted"'


def test_calls_reuse_the_connection(conn: ChannelConnection) -> None:
    for i in range(50):
        assert json.loads(conn.call("echo", {"i": i})) == {"echo": {"i": i}}


def test_a_refusal_comes_back_as_its_own_class(conn: ChannelConnection) -> None:
    with pytest.raises(NotFound, match="nothing stored at tables/x"):
        conn.call("missing")
    with pytest.raises(InvalidRequest, match="unknown action 'nope'"):
        conn.call("nope")
    assert json.loads(conn.call("echo", {})) == {"echo": {}}  # the connection still serves


def test_a_bug_in_an_action_is_a_refusal_naming_it(conn: ChannelConnection) -> None:
    with pytest.raises(KernelError, match="action 'bug' failed: ZeroDivisionError"):
        conn.call("bug")


def test_calls_in_flight_at_once_each_get_a_connection(conn: ChannelConnection) -> None:
    with ThreadPoolExecutor(2) as pool:
        waiting = pool.submit(conn.call, "wait")
        assert json.loads(conn.call("echo", {"while": "waiting"})) == {"echo": {"while": "waiting"}}
        release.set()
        assert json.loads(waiting.result(10)) == "released"


def test_no_answer_in_time_is_a_deadline_and_the_next_call_works(conn: ChannelConnection) -> None:
    with pytest.raises(DeadlineExceeded, match=r"'wait' did not answer within 0\.2 s"):
        conn.call("wait", timeout=0.2)
    release.set()
    assert json.loads(conn.call("echo", {"after": 1})) == {"echo": {"after": 1}}


def test_a_wrong_token_gets_no_answer(server: ChannelServer) -> None:
    stranger = ChannelConnection(server.path, NOWHERE, token="guess")
    with pytest.raises(ConnectionLost):
        stranger.call("echo", {})
    stranger.close()


def test_a_gone_kernel_is_a_lost_connection(server: ChannelServer) -> None:
    conn = ChannelConnection(server.path, NOWHERE, token="sesame")
    server.close()
    with pytest.raises(ConnectionLost, match="refused"):
        conn.call("echo", {})
    conn.close()


def test_the_channel_lives_in_a_directory_only_its_user_can_enter(server: ChannelServer) -> None:
    assert os.stat(server.directory).st_mode & 0o777 == 0o700
    assert os.path.dirname(server.path) == server.directory
