"""Podman as these machines need it: a cached Debian base image, builds and runs.

The notes behind the flags below are in tests/image/README.md. `.ci/run` installs podman,
runc and debootstrap; elsewhere the image fixture skips, naming what is missing.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import free_port, healthy, poll

ROOT = Path(__file__).resolve().parents[2]
BASE_TAG = "localhost/kernel-runtime-base:bookworm"
IMAGE_TAG = "localhost/kernel-runtime:test"
BASE_SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-venv,curl,ca-certificates"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CONTAINER_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
NETWORK_ENV = "KERNEL_IMAGE_TEST_NETWORK"
PODMAN_NPROC = 32768  # podman lowers its own RLIMIT_NPROC to this before starting runc
# pip options (as `pip config list` names them) that mean the same inside a container.
PIP_OPTIONS = {
    "index-url": "PIP_INDEX_URL",
    "extra-index-url": "PIP_EXTRA_INDEX_URL",
    "trusted-host": "PIP_TRUSTED_HOST",
    "default-timeout": "PIP_DEFAULT_TIMEOUT",
    "proxy": "PIP_PROXY",
}
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
START_DEADLINE_S = 300.0  # pip-installing KERNEL_PACKAGES over a slow index counts too
BUILD_TIMEOUT_S = 1800.0


def run(
    argv: Sequence[str], *, timeout: float = 600.0, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command; when `check`, a failure fails the test with the command's output."""
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} failed with exit code {proc.returncode}:\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}",
            pytrace=False,
        )
    return proc


def podman(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`podman --runtime runc ARGS` (the default runtime fails on the cgroup setup here)."""
    return run(["podman", "--runtime", "runc", *args], **kwargs)


def missing(*commands: str) -> list[str]:
    """Those of `commands` not found on PATH."""
    return [command for command in commands if shutil.which(command) is None]


def _hard_limit(kind: int, cap: int) -> int:
    hard = resource.getrlimit(kind)[1]
    return cap if hard == resource.RLIM_INFINITY else min(hard, cap)


def rlimit_args() -> list[str]:
    """`--ulimit` flags runc can apply here: never above the limits podman runs under."""
    nofile = _hard_limit(resource.RLIMIT_NOFILE, 1048576)
    nproc = _hard_limit(resource.RLIMIT_NPROC, PODMAN_NPROC)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def _pip_config() -> dict[str, str]:
    """The host's effective pip options (config files, then PIP_* variables, which win)."""
    listing = run([sys.executable, "-m", "pip", "config", "list"]).stdout
    options = {}
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            options[key.rsplit(".", 1)[-1]] = value.strip().strip("'\"")
    return options


def _ca_bundle(options: dict[str, str]) -> Path | None:
    cert = options.get("cert")
    if cert and Path(cert).is_file():
        return Path(cert)
    return HOST_CA_BUNDLE if HOST_CA_BUNDLE.is_file() else None


def pip_access() -> tuple[list[str], dict[str, str]]:
    """Mount flags and environment that let pip in a container reach the host's index."""
    options = _pip_config()
    env = {}
    for option, variable in PIP_OPTIONS.items():
        # A file:// index or path lives on the host's disk: useless inside the container.
        usable = [v for v in options.get(option, "").split() if not v.startswith("file:")]
        if usable:
            env[variable] = " ".join(usable)
    env.update({name: os.environ[name] for name in PROXY_VARS if os.environ.get(name)})
    mounts = []
    bundle = _ca_bundle(options)
    if bundle is not None:
        mounts = ["-v", f"{bundle}:{CONTAINER_CA_BUNDLE}:ro"]
        env["PIP_CERT"] = CONTAINER_CA_BUNDLE
    return mounts, env


def image_exists(tag: str) -> bool:
    """Whether podman holds an image with this tag."""
    return podman("image", "exists", tag, check=False).returncode == 0


def _image_id(tag: str) -> str | None:
    proc = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def base_image() -> str:
    """The cached Debian base (debootstrap minbase + python3, venv, curl); built if missing."""
    if image_exists(BASE_TAG):
        return BASE_TAG
    with tempfile.TemporaryDirectory(prefix="kernel-runtime-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={BASE_PACKAGES}",
                BASE_SUITE,
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            timeout=1200,
        )
        # An imported tarball has no config at all: give it the usual PATH and shell.
        changes = ["--change", f"ENV PATH={STANDARD_PATH}", "--change", 'CMD ["/bin/bash"]']
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            podman("import", *changes, "-", BASE_TAG, stdin=tar.stdout, timeout=600)
        assert tar.returncode == 0, f"tar of the debootstrap root failed ({tar.returncode})"
    return BASE_TAG


def container_start_problem(image: str) -> str | None:
    """Why podman cannot start a trivial container from `image`, or None when it can."""
    proc = podman("run", "--rm", *rlimit_args(), image, "true", check=False, timeout=120)
    if proc.returncode == 0:
        return None
    return f"exit code {proc.returncode}: {proc.stderr.strip()[-2000:]}"


def build_image(base: str) -> str:
    """Build the project's Dockerfile on `base`; the image replaced by the new one is removed."""
    mounts, env = pip_access()
    previous = _image_id(IMAGE_TAG)
    build_args = [f"--build-arg={name}={value}" for name, value in env.items()]
    # --format docker: the OCI format has no HEALTHCHECK and podman would drop it.
    podman(
        "build",
        "--format",
        "docker",
        "--network",
        "host",
        *mounts,
        *build_args,
        f"--build-arg=BASE_IMAGE={base}",
        "--tag",
        IMAGE_TAG,
        str(ROOT),
        timeout=BUILD_TIMEOUT_S,
    )
    if previous is not None and previous != _image_id(IMAGE_TAG):
        podman("rmi", previous, check=False)  # its layers would pile up build after build
    return IMAGE_TAG


@dataclass
class Container:
    """A running kernel-runtime container and how to reach its two planes."""

    name: str
    http_port: int
    flight_port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def flight_url(self) -> str:
        return f"grpc://127.0.0.1:{self.flight_port}"

    def logs(self) -> str:
        """What the container printed so far."""
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def state(self) -> str:
        """`running`, `exited`, ..."""
        return podman("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip()

    def exit_code(self) -> int:
        """The exit code of the container's main process (once it has exited)."""
        out = podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout
        return int(out.strip())

    def wait_healthy(self, client: httpx.Client) -> dict[str, Any]:
        """Poll /health until it answers 200; fail when the container exits or time runs out."""

        def answer() -> dict[str, Any] | None:
            if self.state() != "running":
                pytest.fail(
                    f"container {self.name} stopped before it was healthy:\n{self.logs()}",
                    pytrace=False,
                )
            return healthy(client)

        return poll(
            answer, START_DEADLINE_S, f"container {self.name} to be healthy", detail=self.logs
        )


def _published_port(name: str, port: int) -> int:
    mapping = podman("port", name, f"{port}/tcp").stdout.split()[0]  # "127.0.0.1:41234"
    return int(mapping.rsplit(":", 1)[1])


def _network_args() -> tuple[list[str], dict[str, str]]:
    """Flags and environment for the chosen network mode (see the module's notes)."""
    if os.environ.get(NETWORK_ENV) == "host":
        ports = {"KERNEL_HTTP_PORT": str(free_port()), "KERNEL_FLIGHT_PORT": str(free_port())}
        return ["--network", "host"], ports
    return ["-p", "127.0.0.1::9999", "-p", "127.0.0.1::8815"], {}


@contextlib.contextmanager
def running(
    image: str, env: dict[str, str] | None = None, volumes: dict[Path, str] | None = None
) -> Iterator[Container]:
    """Run `image` detached; the container is removed on exit, whatever happened."""
    name = f"kernel-runtime-test-{uuid.uuid4().hex[:10]}"
    mounts, pip_env = pip_access()
    network, port_env = _network_args()
    environment = {**pip_env, **port_env, **(env or {})}
    args = ["run", "--detach", "--name", name, *rlimit_args(), *network, *mounts]
    args += [f"--env={key}={value}" for key, value in environment.items()]
    args += [f"--volume={host}:{inside}" for host, inside in (volumes or {}).items()]
    podman(*args, image)
    try:
        if port_env:
            yield Container(
                name, int(port_env["KERNEL_HTTP_PORT"]), int(port_env["KERNEL_FLIGHT_PORT"])
            )
        else:
            yield Container(name, _published_port(name, 9999), _published_port(name, 8815))
    finally:
        podman("rm", "--force", "--time", "10", name, check=False)


def run_to_exit(
    image: str, env: dict[str, str] | None = None, timeout: float = START_DEADLINE_S
) -> subprocess.CompletedProcess[str]:
    """Run `image` in the foreground until it exits (one that must stop on its own).

    The container is removed on the way out, also when it outlives `timeout`.
    """
    name = f"kernel-runtime-test-{uuid.uuid4().hex[:10]}"
    mounts, pip_env = pip_access()
    network, port_env = _network_args()
    environment = {**pip_env, **port_env, **(env or {})}
    args = ["run", "--name", name, *rlimit_args(), *network, *mounts]
    args += [f"--env={key}={value}" for key, value in environment.items()]
    try:
        return podman(*args, image, check=False, timeout=timeout)
    finally:
        podman("rm", "--force", "--time", "10", name, check=False)
