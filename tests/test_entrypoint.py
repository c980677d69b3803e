"""entrypoint.sh outside a container: installs KERNEL_PACKAGES from PATH's pip, then serves.

It runs in a throwaway venv layered over the suite's (which it can read but never writes to):
pip installs the probe package there, and `kernel-runtime` there runs that venv's Python.
KERNEL_CONSTRAINTS points it at a constraints file of the test's (the image's is fixed).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import os
import re
import signal
import site
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import execute, free_port, healthy, poll

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "entrypoint.sh"
IMAGE_CONSTRAINTS = ROOT / "constraints.txt"
PROBE_DIST = "kernel_runtime_entrypoint_probe"
PROBE_MODULE = "kernel_runtime_entrypoint_probe"
PROBE_VERSION = "0.1.0"
PINNED_ELSEWHERE = "0.2.0"  # a version of the probe that no wheel here provides
DEPENDENT_DIST = "kernel_runtime_entrypoint_dependent"  # needs the probe at PROBE_VERSION
GREETING = "installed by entrypoint.sh"
START_DEADLINE_S = 180.0
STOP_DEADLINE_S = 60.0
KERNEL_RUNTIME_SCRIPT = """\
#!{python}
import sys
from control.cli import main
sys.exit(main())
"""


@pytest.fixture(scope="module")
def layered_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with its own pip that also sees the suite venv's packages; its bin directory."""
    venv = tmp_path_factory.mktemp("entrypoint") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    bin_dir = venv / "bin"
    python = bin_dir / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Its own site-packages come first; the suite's (with its .pth files) after them.
    suite_site = site.getsitepackages()[0]
    (Path(purelib) / "suite-venv.pth").write_text(f"import site; site.addsitedir({suite_site!r})\n")
    script = bin_dir / "kernel-runtime"
    script.write_text(KERNEL_RUNTIME_SCRIPT.format(python=python))
    script.chmod(0o755)
    return bin_dir


def _wheel(directory: Path, dist: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A one-module wheel, installable without an index or a build backend."""
    metadata = f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {req}\n" for req in requires)
    files = {
        f"{dist}.py": f"GREETING = {GREETING!r}\n".encode(),
        f"{dist}-{version}.dist-info/METADATA": metadata.encode(),
        f"{dist}-{version}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = f"{dist}-{version}.dist-info/RECORD"
    lines = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{name},sha256={digest},{len(data)}\n")
    files[record] = ("".join(lines) + f"{record},,\n").encode()
    wheel = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel


@pytest.fixture
def probe_wheel(tmp_path: Path) -> Path:
    """The probe package, whose module PROBE_MODULE says GREETING."""
    return _wheel(tmp_path, PROBE_DIST, PROBE_VERSION)


def _constraints(tmp_path: Path, *pins: str) -> Path:
    """A constraints file: the image's pins plus `pins`."""
    path = tmp_path / "constraints.txt"
    path.write_text(IMAGE_CONSTRAINTS.read_text() + "".join(f"{pin}\n" for pin in pins))
    return path


def _environment(bin_dir: Path, packages: str, constraints: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERNEL_", "PIP_"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PIP_NO_INDEX="1",  # what the tests install is on disk
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_CONFIG_FILE=os.devnull,  # no find-links or index of this machine's pip config
        KERNEL_PACKAGES=packages,
        KERNEL_CONSTRAINTS=str(constraints),
        KERNEL_HOST="127.0.0.1",
        KERNEL_HTTP_PORT=str(free_port()),
        KERNEL_FLIGHT_PORT=str(free_port()),
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


def test_installs_kernel_packages_then_serves(
    layered_venv: Path, probe_wheel: Path, tmp_path: Path
) -> None:
    # The probe is pinned at the version it has: compatible, so it installs.
    constraints = _constraints(tmp_path, f"{PROBE_DIST}=={PROBE_VERSION}")
    env = _environment(layered_venv, str(probe_wheel), constraints)
    log = tmp_path / "entrypoint.log"
    with (
        _started(env, log) as proc,
        httpx.Client(base_url=f"http://127.0.0.1:{env['KERNEL_HTTP_PORT']}", timeout=60.0) as http,
    ):

        def serving() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"entrypoint.sh exited with {proc.returncode}:\n{log.read_text()}")
            return healthy(http) is not None

        poll(serving, START_DEADLINE_S, "/health to answer 200", detail=log.read_text)
        result = execute(http, f"import {PROBE_MODULE}\nprint({PROBE_MODULE}.GREETING)")
        assert result["success"], result
        assert result["stdout"] == f"{GREETING}\n"

        proc.send_signal(signal.SIGTERM)  # reaches the server: entrypoint.sh exec'd it
        assert proc.wait(timeout=STOP_DEADLINE_S) == 0, log.read_text()
    installing = (
        f"installing KERNEL_PACKAGES: {probe_wheel} (under the constraints in {constraints})"
    )
    assert installing in log.read_text()
    assert importlib.util.find_spec(PROBE_MODULE) is None  # the suite's venv is untouched


def _stopped_before_serving(env: dict[str, str], log: Path) -> str:
    """Run entrypoint.sh, which must exit non-zero without serving; what it printed."""
    with _started(env, log) as proc:
        assert proc.wait(timeout=STOP_DEADLINE_S) != 0, log.read_text()
    output = log.read_text()
    assert "KERNEL_PACKAGES installed" not in output
    assert "Uvicorn running" not in output and "kernel ready" not in output
    return output


@pytest.mark.parametrize(
    "dependent",
    [
        pytest.param(False, id="the-entry-itself"),
        pytest.param(True, id="a-dependency-of-the-entry"),
    ],
)
def test_a_package_conflicting_with_a_constraint_stops_before_serving(
    layered_venv: Path, probe_wheel: Path, tmp_path: Path, dependent: bool
) -> None:
    # Without the constraint both would install: the wheels pip needs are all on disk.
    constraints = _constraints(tmp_path, f"{PROBE_DIST}=={PINNED_ELSEWHERE}")
    if dependent:
        _wheel(tmp_path, DEPENDENT_DIST, "1.0", requires=(f"{PROBE_DIST}=={PROBE_VERSION}",))
        packages = DEPENDENT_DIST  # the conflicting package is not named by the entry
    else:
        packages = str(probe_wheel)
    env = _environment(layered_venv, packages, constraints)
    env["PIP_FIND_LINKS"] = str(tmp_path)
    output = _stopped_before_serving(env, tmp_path / "entrypoint.log")
    assert f"ERROR: pip install of KERNEL_PACKAGES failed ({packages})" in output
    assert f"pinned packages in {constraints}" in output
    # pip's account of the conflict names the package and the version it is pinned at.
    probe = PROBE_DIST.replace("_", "[-_]")
    pinned = re.escape(PINNED_ELSEWHERE)
    assert re.search(rf"\(constraint\) {probe} ?=={pinned}", output), output


def test_a_missing_constraints_file_stops_before_installing(
    layered_venv: Path, probe_wheel: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-constraints.txt"
    env = _environment(layered_venv, str(probe_wheel), missing)
    output = _stopped_before_serving(env, tmp_path / "entrypoint.log")
    assert f"ERROR: constraints file {missing} (KERNEL_CONSTRAINTS) not found" in output
    assert "entrypoint: installing KERNEL_PACKAGES" not in output


def test_failed_install_stops_before_serving(layered_venv: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-package"  # a path: pip fails without asking any index
    env = _environment(layered_venv, str(missing), _constraints(tmp_path))
    output = _stopped_before_serving(env, tmp_path / "entrypoint.log")
    assert f"ERROR: pip install of KERNEL_PACKAGES failed ({missing})" in output
