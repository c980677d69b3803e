"""Flight paths (`tables/x`, `outputs/1/n/x`, `artifacts/1/x`) and `flight://` URIs."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from flight_kernel.errors import InvalidRequest

FLIGHT_SCHEME = "flight://"

# The kernel process starts in the service's working directory; user code may `os.chdir`
# later, which must not move where relative `input_paths` and `output_dir` point (SPEC §5).
START_DIR = os.getcwd()


def resolve(path: str) -> str:
    """A file path as an absolute one: a relative path is taken from `START_DIR`."""
    if os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(START_DIR, path))


@dataclass(frozen=True)
class TablePath:
    """A table a client uploaded: `tables/<name>`."""

    name: str

    def __str__(self) -> str:
        return f"tables/{self.name}"


@dataclass(frozen=True)
class OutputPath:
    """An output published to the store: `outputs/<flow_id>/<node_id>/<name>`."""

    flow_id: int
    node_id: str
    name: str

    def __str__(self) -> str:
        return f"outputs/{self.flow_id}/{self.node_id}/{self.name}"


@dataclass(frozen=True)
class ArtifactPath:
    """An artifact: `artifacts/<flow_id>/<name>`."""

    flow_id: int
    name: str

    def __str__(self) -> str:
        return f"artifacts/{self.flow_id}/{self.name}"


FlightPath = TablePath | OutputPath | ArtifactPath

_SEGMENTS = {"tables": 2, "outputs": 4, "artifacts": 3}


def _broken_rule(value: str) -> str | None:
    if value == "":
        return "it must not be empty"
    if value in (".", ".."):
        return "it must be a plain name, not '.' or '..'"
    for char, shown in (("/", "'/'"), ("\\", "'\\'"), ("\x00", "NUL")):
        if char in value:
            return f"it must not contain {shown}"
    return None


def check_segment(value: str, what: str) -> str:
    """Refuse a value that cannot be one segment of a Flight path or a file name."""
    rule = _broken_rule(value)
    if rule is not None:
        raise InvalidRequest(f"{what} {value!r} is not usable as a name: {rule}")
    return value


# int() also takes '1_0', '+1', ' 1' and non-ASCII digits: each would be a second spelling
# of one path. [0-9] is ASCII only, and fullmatch allows no trailing newline.
_FLOW_ID = re.compile(r"-?[0-9]+")


def _flow_id(value: str) -> int:
    if _FLOW_ID.fullmatch(value) is None:
        raise InvalidRequest(
            f"flow id {value!r} in a Flight path is not an integer written as plain ASCII "
            "digits with an optional leading '-'"
        )
    return int(value)


def from_segments(segments: list[str]) -> FlightPath:
    """Parse the segments of a path; raise `InvalidRequest` naming what is wrong."""
    if not segments or segments == [""]:
        raise InvalidRequest(
            "empty Flight path; expected tables/<name>, "
            "outputs/<flow_id>/<node_id>/<name> or artifacts/<flow_id>/<name>"
        )
    kind = segments[0]
    if kind not in _SEGMENTS:
        raise InvalidRequest(
            f"unknown Flight path kind {kind!r} in {'/'.join(segments)!r}; "
            "expected 'tables', 'outputs' or 'artifacts'"
        )
    if len(segments) != _SEGMENTS[kind]:
        raise InvalidRequest(
            f"Flight path {'/'.join(segments)!r} has {len(segments)} segments; "
            f"a {kind} path has {_SEGMENTS[kind]}"
        )
    for seg in segments[1:]:
        check_segment(seg, "path segment")
    if kind == "tables":
        return TablePath(segments[1])
    if kind == "outputs":
        return OutputPath(_flow_id(segments[1]), segments[2], segments[3])
    return ArtifactPath(_flow_id(segments[1]), segments[2])


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{what} is not valid UTF-8") from None


def parse_ticket(raw: bytes) -> FlightPath:
    """A ticket is the UTF-8 bytes of a path."""
    return from_segments(_decode(raw, "ticket").split("/"))


def parse_descriptor_path(raw_segments: list[bytes]) -> FlightPath:
    """A path descriptor's segments; a single segment holding slashes is accepted too."""
    segments = [_decode(s, "descriptor path") for s in raw_segments]
    if len(segments) == 1:
        segments = segments[0].split("/")
    return from_segments(segments)


@dataclass(frozen=True)
class FlightURI:
    """`flight:///<path>` (this kernel) or `flight://host:port/<path>` (another server)."""

    path: FlightPath
    host: str | None = None
    port: int | None = None

    @property
    def is_local(self) -> bool:
        return self.host is None

    def __str__(self) -> str:
        where = "" if self.host is None else f"{self.host}:{self.port}"
        return f"{FLIGHT_SCHEME}{where}/{self.path}"


def is_flight_uri(value: str) -> bool:
    return value.startswith(FLIGHT_SCHEME)


def parse_flight_uri(value: str) -> FlightURI:
    """Parse `flight:///tables/x` or `flight://host:port/tables/x`."""
    parts = urlsplit(value)
    path = from_segments(parts.path.lstrip("/").split("/"))
    if not parts.netloc:
        return FlightURI(path)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise InvalidRequest(
            f"Flight URI {value!r} must be flight:///<path> or flight://<host>:<port>/<path>"
        )
    return FlightURI(path, parts.hostname, port)


def local_uri(path: FlightPath) -> str:
    return f"{FLIGHT_SCHEME}/{path}"
