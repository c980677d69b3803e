"""Configuration, read once from the KERNEL_* environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field


def _float_or_none(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    return float(value)


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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Build settings from `KERNEL_*` variables; unset ones keep their defaults."""
        d = cls()
        return cls(
            host=environ.get("KERNEL_HOST", d.host),
            http_port=int(environ.get("KERNEL_HTTP_PORT", d.http_port)),
            flight_port=int(environ.get("KERNEL_FLIGHT_PORT", d.flight_port)),
            auth_token=environ.get("KERNEL_AUTH_TOKEN") or None,
            exec_timeout_s=_float_or_none(environ.get("KERNEL_EXEC_TIMEOUT_S")),
            max_stream_bytes=int(environ.get("KERNEL_MAX_STREAM_BYTES", d.max_stream_bytes)),
            advertise_location=environ.get("KERNEL_ADVERTISE_LOCATION") or None,
            log_level=environ.get("KERNEL_LOG_LEVEL", d.log_level).upper(),
            interrupt_grace_s=float(environ.get("KERNEL_INTERRUPT_GRACE_S", d.interrupt_grace_s)),
            start_timeout_s=float(environ.get("KERNEL_START_TIMEOUT_S", d.start_timeout_s)),
            shutdown_grace_s=float(environ.get("KERNEL_SHUTDOWN_GRACE_S", d.shutdown_grace_s)),
        )

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env = {
            "KERNEL_HOST": self.host,
            "KERNEL_HTTP_PORT": str(self.http_port),
            "KERNEL_FLIGHT_PORT": str(self.flight_port),
            "KERNEL_MAX_STREAM_BYTES": str(self.max_stream_bytes),
            "KERNEL_LOG_LEVEL": self.log_level,
            "KERNEL_INTERRUPT_GRACE_S": str(self.interrupt_grace_s),
        }
        if self.auth_token:
            env["KERNEL_AUTH_TOKEN"] = self.auth_token
        if self.exec_timeout_s is not None:
            env["KERNEL_EXEC_TIMEOUT_S"] = str(self.exec_timeout_s)
        if self.advertise_location:
            env["KERNEL_ADVERTISE_LOCATION"] = self.advertise_location
        return env

    @property
    def connect_host(self) -> str:
        """The address a local client uses to reach a server bound to `host`."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
