"""Configuration, read once from the KERNEL_* environment variables."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

ISOLATIONS = ("flow", "shared")  # a kernel process per flow, or one for every flow


class ConfigError(ValueError):
    """A `KERNEL_*` variable has a value that cannot be used; the message names both."""


def _read(
    environ: Mapping[str, str], key: str, convert: Callable[[str], T], default: T, what: str
) -> T:
    raw = environ.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        return convert(raw.strip())
    except ValueError:
        raise ConfigError(f"Config {key!r} has value {raw!r}. Not a valid {what}.") from None


def _text(environ: Mapping[str, str], key: str) -> str | None:
    """A text variable; unset, empty and blank all mean "not given"."""
    value = environ.get(key, "").strip()
    return value or None


def _port(raw: str) -> int:
    port = int(raw)
    if not 0 <= port <= 65535:
        raise ValueError(raw)
    return port


def _positive(raw: str) -> float:
    value = float(raw)
    if not 0 < value < float("inf"):
        raise ValueError(raw)
    return value


def _size(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(raw)
    return value


def _isolation(raw: str) -> str:
    if raw not in ISOLATIONS:
        raise ValueError(raw)
    return raw


def _count(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError(raw)
    return value


def _level(raw: str) -> str:
    level = raw.upper()
    if level not in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"):
        raise ValueError(raw)
    return level


@dataclass(frozen=True)
class Settings:
    """Every knob of the service; see the configuration table in the README."""

    host: str = "127.0.0.1"
    http_port: int = 9999
    flight_port: int = 8815
    auth_token: str | None = field(default=None, repr=False)  # never logged
    exec_timeout_s: float | None = None
    max_stream_bytes: int = 1024 * 1024
    advertise_location: str | None = None
    log_level: str = "INFO"
    interrupt_grace_s: float = 5.0
    start_timeout_s: float = 60.0
    shutdown_grace_s: float = 10.0
    health_timeout_s: float = 60.0
    store_dir: str | None = None  # None: a private directory, removed at shutdown
    store_max_bytes: int | None = None  # None: 80% of the file system's free space at start
    isolation: str = "flow"
    max_kernels: int = 16  # flow kernels alive at once, spares not counted
    max_namespaces: int = 20  # named namespaces a kernel keeps

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Build settings from `KERNEL_*` variables; unset ones keep their defaults."""
        d = cls()
        e = environ
        return cls(
            host=_text(e, "KERNEL_HOST") or d.host,
            http_port=_read(e, "KERNEL_HTTP_PORT", _port, d.http_port, "port (0-65535)"),
            flight_port=_read(e, "KERNEL_FLIGHT_PORT", _port, d.flight_port, "port (0-65535)"),
            auth_token=_text(e, "KERNEL_AUTH_TOKEN"),
            exec_timeout_s=_read(
                e, "KERNEL_EXEC_TIMEOUT_S", _positive, d.exec_timeout_s, "positive number"
            ),
            max_stream_bytes=_read(
                e, "KERNEL_MAX_STREAM_BYTES", _size, d.max_stream_bytes, "positive integer"
            ),
            advertise_location=_text(e, "KERNEL_ADVERTISE_LOCATION"),
            log_level=_read(e, "KERNEL_LOG_LEVEL", _level, d.log_level, "log level"),
            interrupt_grace_s=_read(
                e, "KERNEL_INTERRUPT_GRACE_S", _positive, d.interrupt_grace_s, "positive number"
            ),
            start_timeout_s=_read(
                e, "KERNEL_START_TIMEOUT_S", _positive, d.start_timeout_s, "positive number"
            ),
            shutdown_grace_s=_read(
                e, "KERNEL_SHUTDOWN_GRACE_S", _positive, d.shutdown_grace_s, "positive number"
            ),
            health_timeout_s=_read(
                e, "KERNEL_HEALTH_TIMEOUT_S", _positive, d.health_timeout_s, "positive number"
            ),
            store_dir=_text(e, "KERNEL_STORE_DIR"),
            store_max_bytes=_read(
                e, "KERNEL_STORE_MAX_BYTES", _size, d.store_max_bytes, "positive integer"
            ),
            isolation=_read(
                e, "KERNEL_ISOLATION", _isolation, d.isolation, "isolation (flow or shared)"
            ),
            max_kernels=_read(e, "KERNEL_MAX_KERNELS", _count, d.max_kernels, "positive integer"),
            max_namespaces=_read(
                e, "KERNEL_MAX_NAMESPACES", _count, d.max_namespaces, "positive integer"
            ),
        )

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process, but the token:
        it never goes into an environment (user code could read it there)."""
        env = {
            "KERNEL_HOST": self.host,
            "KERNEL_HTTP_PORT": str(self.http_port),
            "KERNEL_FLIGHT_PORT": str(self.flight_port),
            "KERNEL_MAX_STREAM_BYTES": str(self.max_stream_bytes),
            "KERNEL_LOG_LEVEL": self.log_level,
            "KERNEL_INTERRUPT_GRACE_S": str(self.interrupt_grace_s),
            "KERNEL_ISOLATION": self.isolation,
            "KERNEL_MAX_NAMESPACES": str(self.max_namespaces),
        }
        if self.exec_timeout_s is not None:
            env["KERNEL_EXEC_TIMEOUT_S"] = str(self.exec_timeout_s)
        if self.advertise_location:
            env["KERNEL_ADVERTISE_LOCATION"] = self.advertise_location
        if self.store_dir is not None:
            env["KERNEL_STORE_DIR"] = self.store_dir
        if self.store_max_bytes is not None:
            env["KERNEL_STORE_MAX_BYTES"] = str(self.store_max_bytes)
        return env

    @property
    def connect_host(self) -> str:
        """The address a local client uses to reach a server bound to `host`."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
