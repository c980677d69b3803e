"""entrypoint.sh outside a container: installs KERNEL_PACKAGES from PATH's pip, then serves."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ENTRYPOINT = Path(__file__).resolve().parents[1] / "entrypoint.sh"
VENV_BIN = Path(sys.executable).parent  # the project's venv, which runs the suite
PROBE_DIST = "kernel-runtime-entrypoint-probe"
PROBE_MODULE = "kernel_runtime_entrypoint_probe"
START_DEADLINE_S = 180.0  # includes pip building and installing the probe package
STOP_DEADLINE_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False
    )


@pytest.fixture
def probe_package(tmp_path: Path) -> Iterator[Path]:
    """A one-module package in a directory, installable by path; uninstalled afterwards."""
    source = tmp_path / "probe"
    source.mkdir()
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{PROBE_DIST}"\nversion = "0.1.0"\n\n'
        f'[tool.setuptools]\npy-modules = ["{PROBE_MODULE}"]\n'
    )
    (source / f"{PROBE_MODULE}.py").write_text('GREETING = "installed by entrypoint.sh"\n')
    yield source
    # The suite's venv must stay as `make install` left it.
    uninstall = _pip("uninstall", "-y", PROBE_DIST)
    assert uninstall.returncode == 0, uninstall.stderr


def _environment(packages: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNEL_")}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        KERNEL_PACKAGES=packages,
        KERNEL_HOST="127.0.0.1",
        KERNEL_HTTP_PORT=str(_free_port()),
        KERNEL_FLIGHT_PORT=str(_free_port()),
    )
    return env


@contextlib.contextmanager
def _started(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """entrypoint.sh as a child; killed on the way out if it is still running."""
    with log.open("wb") as sink:
        proc = subprocess.Popen([str(ENTRYPOINT)], env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _wait_healthy(proc: subprocess.Popen[bytes], http: httpx.Client, log: Path) -> None:
    """Poll /health until it answers 200; fail when the process exits or time runs out."""
    deadline = time.monotonic() + START_DEADLINE_S
    while True:
        with contextlib.suppress(httpx.TransportError):  # not listening yet
            if http.get("/health").status_code == 200:
                return
        if proc.poll() is not None:
            pytest.fail(f"entrypoint.sh exited with {proc.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"not healthy within {START_DEADLINE_S:g} s:\n{log.read_text()}")
        time.sleep(0.1)  # a polling interval


def _execute(http: httpx.Client, code: str) -> dict[str, Any]:
    response = http.post("/execute", json={"node_id": "probe", "code": code})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_installs_kernel_packages_then_serves(probe_package: Path, tmp_path: Path) -> None:
    env = _environment(str(probe_package))
    log = tmp_path / "entrypoint.log"
    with (
        _started(env, log) as proc,
        httpx.Client(base_url=f"http://127.0.0.1:{env['KERNEL_HTTP_PORT']}", timeout=60.0) as http,
    ):
        _wait_healthy(proc, http, log)
        result = _execute(http, f"import {PROBE_MODULE}\nprint({PROBE_MODULE}.GREETING)")
        assert result["success"], result
        assert result["stdout"] == "installed by entrypoint.sh\n"

        proc.send_signal(signal.SIGTERM)  # reaches the server: entrypoint.sh exec'd it
        assert proc.wait(timeout=STOP_DEADLINE_S) == 0, log.read_text()
    assert f"installing KERNEL_PACKAGES: {probe_package}" in log.read_text()


def test_failed_install_stops_before_serving(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-package"  # a path: pip fails without asking any index
    env = _environment(str(missing))
    log = tmp_path / "entrypoint.log"
    with _started(env, log) as proc:
        assert proc.wait(timeout=STOP_DEADLINE_S) != 0
    output = log.read_text()
    assert "ERROR: pip install of KERNEL_PACKAGES failed" in output
    assert "Uvicorn running" not in output and "kernel ready" not in output
