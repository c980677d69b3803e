"""Start a kernel process: `python -m flight_kernel` (configured by KERNEL_* variables).

When its parent passes `KERNEL_ANNOUNCE_FD`, the kernel writes one JSON line there once it
listens, `{"pid", "kernel_id", "location"}`, or `{"error"}` when it cannot start: the parent
never has to trust whatever answers on a port.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

from flight_kernel.context import install_capture
from flight_kernel.kernel import Kernel
from flight_kernel.server import KernelFlightServer
from flight_kernel.settings import Settings

logger = logging.getLogger("flight_kernel")

ANNOUNCE_FD = "KERNEL_ANNOUNCE_FD"
KERNEL_ID = "KERNEL_ID"


def _announce(message: dict[str, Any]) -> None:
    fd = os.environ.pop(ANNOUNCE_FD, None)
    if fd is None:
        return
    with os.fdopen(int(fd), "w") as pipe:
        pipe.write(json.dumps(message) + "\n")


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s kernel %(levelname)s %(name)s: %(message)s",
    )
    install_capture()
    kernel = Kernel(settings, kernel_id=os.environ.pop(KERNEL_ID, ""))
    try:
        server = KernelFlightServer(kernel)
    except Exception as exc:
        _announce({"error": f"cannot listen on Flight port {settings.flight_port}: {exc}"})
        raise SystemExit(2) from None

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _announce({"pid": os.getpid(), "kernel_id": kernel.kernel_id, "location": kernel.location})
    logger.info("kernel serving Flight on %s:%s", settings.host, server.port)
    server.serve()
    logger.info("kernel stopped")


if __name__ == "__main__":
    main()
