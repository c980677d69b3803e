"""The events of a streaming execution (SPEC §10 `stream: true`), sent while the code runs.

User code's prints, logs and displays are put here by the thread that made them; a pump
thread of the stream sends them through the transport's `send` (a channel frame, a Flight
Result) at once, so each leaves the kernel as soon as the transport takes it. Text that
arrives while the previous event is being sent is merged into one event per stream (in a
probe through an in-process kernel, 100,000 prints left as 50 events, 5,000 as 3). Only
what the execution keeps is sent (the caps of stdout, logs and displays hold here too), so
what waits is bounded.

When `send` fails (the client went away), the stream calls `on_lost` once (the kernel
interrupts the execution: nobody is listening any more) and drops what follows.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Generator
from typing import Any

logger = logging.getLogger(__name__)

_dumps = json.dumps  # taken now: user code that breaks json.dumps must not silence the stream
# `print` writes its text and its line end apart: a line begun is given this long to end, so
# that it leaves as one event rather than two
LINE_WAIT_S = 0.005

Send = Callable[[bytes], None]


class EventStream:
    """Events of one execution, in order, sent by a thread of their own."""

    def __init__(self, send: Send, on_lost: Callable[[], None] | None = None) -> None:
        self._send = send
        self._on_lost = on_lost
        self._cond = threading.Condition()
        # (event, fields); a text event's fields are the parts of its text, joined when sent
        self._pending: list[tuple[str, list[str] | dict[str, Any]]] = []
        self._closed = False
        self.lost = False
        self._thread = threading.Thread(target=self._pump, name="execution-events", daemon=True)
        self._thread.start()

    def text(self, stream: str, text: str) -> None:
        """Printed text of `stream` (`stdout` or `stderr`)."""
        if not text:
            return
        with self._cond:
            if self.lost:
                return
            last = self._pending[-1] if self._pending else None
            if last is not None and last[0] == stream and isinstance(last[1], list):
                last[1].append(text)
            else:
                self._pending.append((stream, [text]))
            self._cond.notify()

    def put(self, event: str, **fields: Any) -> None:
        """Any other event, its fields beside `event`: `log` (the record's), `display` (the
        bundle's `data`, `metadata`, `title`)."""
        with self._cond:
            if self.lost:
                return
            self._pending.append((event, fields))
            self._cond.notify()

    def close(self) -> None:
        """Send what is pending and stop; the caller sends the final result after this."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _pump(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                self._cond.wait_for(lambda: self._closed or not self._open_line(), LINE_WAIT_S)
                batch, self._pending = self._pending, []
                if not batch and self._closed:
                    return
            for event, fields in batch:
                body = {"text": "".join(fields)} if isinstance(fields, list) else fields
                try:
                    self._send(_dumps({"event": event, **body}, default=str).encode())
                except Exception as exc:  # the transport is gone: nobody reads any more
                    self._lose(exc)
                    break

    def _open_line(self) -> bool:
        """Whether the last event waiting is text whose line has not ended (lock held)."""
        fields = self._pending[-1][1] if self._pending else None
        return isinstance(fields, list) and not fields[-1].endswith("\n")

    def _lose(self, exc: Exception) -> None:
        with self._cond:
            if self.lost:
                return
            self.lost = True
            self._pending = []
        logger.info("the client of a streaming execution went away (%s)", exc)
        if self._on_lost is not None:
            try:
                self._on_lost()
            except Exception:
                logger.exception("on_lost of a streaming execution")


def relayed(
    run: Callable[[Send], bytes], on_abandon: Callable[[], None] | None = None
) -> Generator[bytes]:
    """For transports that answer with an iterator (Flight's `do_action`): `run(send)` runs in
    a thread of its own; this yields each event it sends, then its answer (its exception is
    raised here). A consumer that stops before the answer (its client went away) calls
    `on_abandon`, and the events sent after that fail, as a closed connection's would."""
    items: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    abandoned = threading.Event()

    def send(event: bytes) -> None:
        if abandoned.is_set():
            raise ConnectionError("the client of this stream went away")
        items.put(("event", event))

    def work() -> None:
        try:
            items.put(("answer", run(send)))
        except BaseException as exc:  # raised in the consumer's thread
            items.put(("error", exc))

    threading.Thread(target=work, name="streamed-action", daemon=True).start()
    finished = False
    try:
        while True:
            kind, item = items.get()
            if kind == "error":
                finished = True
                raise item
            if kind == "answer":
                finished = True
                yield item
                return
            yield item
    finally:
        if not finished:
            abandoned.set()
            if on_abandon is not None:
                on_abandon()


def result_event(answer: bytes) -> bytes:
    """The last event of a stream: `{"event": "result", "result": <the answer>}`."""
    return b'{"event": "result", "result": ' + answer + b"}"
