"""Streaming executions (SPEC §10 `stream: true`): NDJSON over HTTP, one Flight Result per
event on the data plane, `KernelClient` callbacks, and a client that goes away interrupting
the execution. Events must arrive while the code runs: the tests meet the code at latches
that only an event already received can open."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pyarrow.flight as flight
import pytest
from fastapi.testclient import TestClient

from control.app import create_app
from flight_kernel.client import KernelClient
from flight_kernel.errors import KernelUnavailable
from flight_kernel.events import EventStream
from flight_kernel.kernel import Kernel
from flight_kernel.server import KernelFlightServer
from flight_kernel.settings import Settings
from tests.conftest import attached
from tests.control.doubles import function_kernels
from tests.control.test_dataplane import location_of
from tests.helpers import Latch, poll, serving

EVERY_KIND = (
    "import sys\n"
    "print('out')\n"
    "print('err', file=sys.stderr)\n"
    "flowfile.log_info('logged')\n"
    "flowfile.display([1, 2], title='numbers')\n"
)


def _stream(client: TestClient, **body: Any) -> list[dict[str, Any]]:
    body.setdefault("node_id", "n")
    with client.stream("POST", "/execute", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) for line in response.iter_lines() if line]


def _merged(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events with adjacent text of one stream joined: how text is cut into events (a line
    and its end can come apart) is the transport's business."""
    merged: list[dict[str, Any]] = []
    for event in events:
        last = merged[-1] if merged else None
        if last is not None and "text" in event and last["event"] == event["event"]:
            last["text"] += event["text"]
        else:
            merged.append(dict(event))
    return merged


def _texts(events: list[dict[str, Any]], kind: str) -> str:
    return "".join(e["text"] for e in events if e["event"] == kind)


def test_a_stream_has_each_kind_of_event_in_order_and_the_result_last(client: TestClient) -> None:
    events = _merged(_stream(client, code=EVERY_KIND))

    kinds = [e["event"] for e in events]
    assert kinds == ["stdout", "stderr", "log", "display", "result"]
    assert events[0] == {"event": "stdout", "text": "out\n"}
    assert events[1] == {"event": "stderr", "text": "err\n"}
    assert (events[2]["level"], events[2]["message"], events[2]["node_id"]) == (
        "INFO",
        "logged",
        "n",
    )
    assert events[3] == {
        "event": "display",
        "data": {"text/plain": "[1, 2]"},
        "metadata": {},
        "title": "numbers",
    }
    result = events[-1]["result"]
    assert result["success"] is True
    assert (result["stdout"], result["stderr"]) == ("out\n", "err\n")
    assert result["display_outputs"] == [
        {"data": {"text/plain": "[1, 2]"}, "metadata": {}, "title": "numbers"}
    ]


def test_the_result_event_is_the_body_a_plain_execute_answers(client: TestClient) -> None:
    plain = client.post("/execute", json={"node_id": "n", "code": EVERY_KIND}).json()

    streamed = _stream(client, code=EVERY_KIND)[-1]["result"]

    different = {"execution_id", "execution_time_ms", "logs"}
    assert {k: v for k, v in streamed.items() if k not in different} == {
        k: v for k, v in plain.items() if k not in different
    }
    assert [r["message"] for r in streamed["logs"]] == ["logged"]


def test_events_arrive_while_the_code_still_runs(client: TestClient, tmp_path: Path) -> None:
    latch = Latch(tmp_path / "seen")
    code = (
        "import os, time\n"
        "print('first')\n"
        f"deadline = time.monotonic() + 30\n"
        f"while not os.path.exists({str(latch.path)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        f"print('released' if os.path.exists({str(latch.path)!r}) else 'never released')\n"
    )
    seen: list[dict[str, Any]] = []
    with client.stream(
        "POST", "/execute", json={"node_id": "n", "code": code, "stream": True}
    ) as r:
        for line in r.iter_lines():
            event = json.loads(line)
            seen.append(event)
            if _texts(seen, "stdout") == "first\n":
                latch.set()  # only an event received before the code ends opens it

    assert seen[-1]["result"]["stdout"] == "first\nreleased\n"
    assert _texts(seen, "stdout") == "first\nreleased\n"


def test_many_prints_arrive_whole_and_in_order(client: TestClient) -> None:
    events = _stream(client, code="for i in range(5000):\n    print(i)")

    expected = "".join(f"{i}\n" for i in range(5000))
    assert _texts(events, "stdout") == expected
    assert events[-1]["result"]["stdout"] == expected


def test_streamed_output_keeps_to_the_cap(settings: Settings) -> None:
    capped = dataclasses.replace(settings, max_stream_bytes=100)
    with KernelFlightServer(Kernel(capped)) as server:
        app = create_app(capped, kernels=attached(capped, f"grpc://127.0.0.1:{server.port}"))
        with TestClient(app) as client:
            events = _stream(client, code="print('x' * 300)")

    assert _texts(events, "stdout") == "x" * 100
    assert events[-1]["result"]["stdout"].startswith("x" * 100 + "\n[output truncated: 201 bytes")


def test_a_failure_still_ends_with_the_result(client: TestClient) -> None:
    events = _merged(_stream(client, code="print('before')\nraise ValueError('boom')"))

    assert [e["event"] for e in events] == ["stdout", "result"]
    result = events[-1]["result"]
    assert (result["success"], result["error"]) == (False, "ValueError: boom")
    assert result["stdout"] == "before\n"


def test_a_syntax_error_streams_its_result_only(client: TestClient) -> None:
    events = _stream(client, code="def broken(:\n")

    assert [e["event"] for e in events] == ["result"]
    assert events[0]["result"]["error"].startswith("SyntaxError")


def test_a_display_from_a_thread_of_the_execution_is_one_of_its_events(
    client: TestClient,
) -> None:
    code = (
        "import threading\n"
        "t = threading.Thread(target=lambda: flowfile.display('from a thread'))\n"
        "t.start(); t.join()\n"
    )
    events = _stream(client, code=code)

    assert [e["data"] for e in events if e["event"] == "display"] == [
        {"text/plain": "from a thread"}
    ]


def test_a_streaming_body_with_a_wrong_type_is_a_422(client: TestClient) -> None:
    response = client.post("/execute", json={"node_id": "n", "code": "x = 1", "stream": "yes"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "stream"]


def test_the_streamed_execution_id_is_the_clients_or_minted(client: TestClient) -> None:
    named = _stream(client, code="x = 1", execution_id="mine")[-1]["result"]
    minted = _stream(client, code="x = 1")[-1]["result"]

    assert named["execution_id"] == "mine"
    assert len(minted["execution_id"]) == 32


# -- the data plane -------------------------------------------------------------------------


def _action(fc: flight.FlightClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    action = flight.Action("execute", json.dumps(body).encode())
    return [json.loads(r.body.to_pybytes()) for r in fc.do_action(action)]


def test_the_flight_execute_action_yields_one_result_per_event(client: TestClient) -> None:
    with flight.connect(location_of(client)) as fc:
        events = _merged(_action(fc, {"node_id": "n", "code": EVERY_KIND, "stream": True}))
        plain = _action(fc, {"node_id": "n", "code": "print('one answer')"})

    assert [e["event"] for e in events] == ["stdout", "stderr", "log", "display", "result"]
    assert events[-1]["result"]["stdout"] == "out\n"
    assert [p["stdout"] for p in plain] == ["one answer\n"]


def test_a_flight_stream_of_a_bad_body_is_refused_naming_the_field(client: TestClient) -> None:
    with (
        flight.connect(location_of(client)) as fc,
        pytest.raises(flight.FlightServerError, match="stream"),
    ):
        _action(fc, {"node_id": "n", "code": "x = 1", "stream": 1})


# -- KernelClient and clients that go away --------------------------------------------------


@pytest.fixture
def served(
    settings: Settings, kernel_server: KernelFlightServer, kernel_location: str
) -> Iterator[tuple[str, str]]:
    """The app under uvicorn (a real HTTP server): its URL and its data plane's location."""
    app_settings = dataclasses.replace(settings, http_port=0)
    app = create_app(app_settings, kernels=attached(app_settings, kernel_location))
    with serving(app) as url:
        yield url, app.state.service.flight_location


def test_kernel_client_callbacks_get_each_event_as_it_comes(
    served: tuple[str, str], tmp_path: Path
) -> None:
    latch = Latch(tmp_path / "seen")
    code = (
        EVERY_KIND
        + "import os, time\n"
        + "deadline = time.monotonic() + 30\n"
        + f"while not os.path.exists({str(latch.path)!r}) and time.monotonic() < deadline:\n"
        + "    time.sleep(0.01)\n"
        + f"print(os.path.exists({str(latch.path)!r}))\n"
    )
    out: list[str] = []
    err: list[str] = []
    shown: list[dict[str, Any]] = []

    def on_display(bundle: dict[str, Any]) -> None:
        shown.append(bundle)
        latch.set()  # the display came before the code ended

    with KernelClient(*served, timeout=60) as kc:
        result = kc.execute(
            "n", code, on_stdout=out.append, on_stderr=err.append, on_display=on_display
        )

    assert result.success, result
    assert "".join(out) == "out\nTrue\n"
    assert err == ["err\n"]
    assert shown == [{"data": {"text/plain": "[1, 2]"}, "metadata": {}, "title": "numbers"}]
    assert result.stdout == "out\nTrue\n"


def test_kernel_client_without_callbacks_does_not_stream(served: tuple[str, str]) -> None:
    with KernelClient(*served, timeout=60) as kc:
        result = kc.execute("n", "x = 40\nx + 2", interactive=True, namespace="nb")
        again = kc.execute("n", "x", interactive=True, namespace="nb")

    assert result.display_outputs == [{"data": {"text/plain": "42"}, "metadata": {}, "title": ""}]
    assert again.display_outputs[0]["data"] == {"text/plain": "40"}


ENDLESS = "import time\nwhile True:\n    print('tick')\n    time.sleep(0.02)\n"


def _running(url: str) -> list[dict[str, Any]]:
    running: list[dict[str, Any]] = httpx.get(f"{url}/health").json()["running"]
    return running


def test_an_http_client_that_disconnects_interrupts_its_streaming_execution(
    served: tuple[str, str],
) -> None:
    url, _ = served
    body = {"node_id": "n", "code": ENDLESS, "stream": True, "execution_id": "gone"}
    with (
        httpx.Client(base_url=url, timeout=30) as http,
        http.stream("POST", "/execute", json=body) as response,
    ):
        lines = response.iter_lines()  # kept: a dropped iterator closes the connection
        first = json.loads(next(lines))
        assert _running(url) == [{"execution_id": "gone", "flow_id": 0, "node_id": "n"}]
    # the connection is closed here, mid-stream

    assert first["event"] == "stdout"
    assert first["text"].startswith("tick")
    poll(lambda: _running(url) == [], 30, "the abandoned execution to be interrupted")


def test_a_flight_client_that_goes_away_interrupts_its_streaming_execution(
    served: tuple[str, str],
) -> None:
    url, location = served
    body = {"node_id": "n", "code": ENDLESS, "stream": True, "execution_id": "gone"}
    fc = flight.connect(location)
    results = iter(fc.do_action(flight.Action("execute", json.dumps(body).encode())))
    first = json.loads(next(results).body.to_pybytes())
    del results  # the reader goes, as with a client that stops or dies: the call is cancelled
    fc.close()

    assert first["event"] == "stdout"
    poll(lambda: _running(url) == [], 30, "the abandoned execution to be interrupted")


# -- the event stream itself ----------------------------------------------------------------


def test_text_that_waits_is_merged_per_stream_in_order() -> None:
    sent: list[bytes] = []
    hold = threading.Lock()
    hold.acquire()

    def send(event: bytes) -> None:
        with hold:  # the first send waits until the test has queued the rest
            sent.append(event)

    events = EventStream(send)
    events.text("stdout", "a")
    poll(lambda: not events._pending, 10, "the first event to be taken")
    events.text("stdout", "b")
    events.text("stdout", "c")
    events.text("stderr", "d")
    events.put("log", message="m")
    events.text("stdout", "e")
    hold.release()
    events.close()

    assert [json.loads(e) for e in sent] == [
        {"event": "stdout", "text": "a"},
        {"event": "stdout", "text": "bc"},
        {"event": "stderr", "text": "d"},
        {"event": "log", "message": "m"},
        {"event": "stdout", "text": "e"},
    ]


def test_a_failed_send_tells_on_lost_once_and_drops_the_rest() -> None:
    lost: list[str] = []

    def send(event: bytes) -> None:
        raise BrokenPipeError("gone")

    events = EventStream(send, on_lost=lambda: lost.append("lost"))
    events.text("stdout", "a")
    poll(lambda: events.lost, 10, "the stream to notice")
    events.text("stdout", "b")
    events.put("display", data={})
    events.close()

    assert lost == ["lost"]


def test_a_refusal_after_the_stream_began_is_its_last_event_with_its_kind(
    settings: Settings,
) -> None:
    def unavailable(action: str, body: dict[str, Any]) -> Any:
        raise KernelUnavailable("the kernel is (re)starting; try again shortly")

    app = create_app(settings, kernels=function_kernels(settings, unavailable))
    with TestClient(app) as client:
        events = _stream(client, code="x = 1")

    assert events == [
        {
            "event": "error",
            "error": "the kernel is (re)starting; try again shortly",
            "error_kind": "KernelUnavailable",
        }
    ]


def test_kernel_client_raises_the_refusal_a_stream_ended_with(settings: Settings) -> None:
    def unavailable(action: str, body: dict[str, Any]) -> Any:
        raise KernelUnavailable("the kernel is (re)starting; try again shortly")

    app_settings = dataclasses.replace(settings, http_port=0)
    app = create_app(app_settings, kernels=function_kernels(app_settings, unavailable))
    with (
        serving(app) as url,
        KernelClient(url, app.state.service.flight_location) as kc,
        pytest.raises(KernelUnavailable, match="starting"),
    ):
        kc.execute("n", "x = 1", on_stdout=print)


def test_kernel_client_notebook_calls(served: tuple[str, str], tmp_path: Path) -> None:
    latch = Latch(tmp_path / "running")
    with KernelClient(*served, timeout=60) as kc:
        kc.execute("n", "v = 1\nflowfile.display('shown')", flow_id=2, namespace="nb")
        shown = kc.display_outputs("n", flow_id=2)
        cleared = kc.clear_namespace(2)
        gone = kc.execute("m", "print(v)", flow_id=2, namespace="nb")
        memory = kc.memory()
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(
                kc.execute,
                "s",
                # short sleeps: an interrupt lands between them (a long sleep ignores it)
                f"{latch.set_code()}\nimport time\nfor _ in range(3000):\n    time.sleep(0.01)",
                execution_id="x1",
            )
            latch.wait(30, "the execution to run")
            interrupted = kc.interrupt(execution_id="x1")
            result = slow.result(timeout=60)

    assert shown == [{"data": {"text/plain": "shown"}, "metadata": {}, "title": ""}]
    assert cleared["removed_namespaces"] == [{"flow_id": 2, "namespace": "nb"}]
    assert gone.error == "NameError: name 'v' is not defined"
    assert memory["used_bytes"] > 0  # an attached kernel has no pid of ours to list
    assert [i["execution_id"] for i in interrupted] == ["x1"]
    assert result.error is not None and result.error.startswith("Interrupted")
