"""Start the kernel process: `python -m flight_kernel` (configured by KERNEL_* variables)."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from flight_kernel.context import install_capture
from flight_kernel.server import KernelFlightServer
from flight_kernel.settings import Settings

logger = logging.getLogger("flight_kernel")


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s kernel %(levelname)s %(name)s: %(message)s"
    )
    install_capture()
    server = KernelFlightServer(settings)

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info("kernel serving Flight on %s:%s", settings.host, server.port)
    server.serve()
    logger.info("kernel stopped")


if __name__ == "__main__":
    main()
