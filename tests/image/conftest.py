"""Fixtures of the image tests: the built image, and one running container with /shared."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.image import podman


@pytest.fixture(scope="session")
def image() -> str:
    """The project's image, built on the cached local base; skips when podman cannot run."""
    missing = podman.missing("podman", "runc")
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (.ci/run apt-installs the tools)")
    if not podman.image_exists(podman.BASE_TAG) and podman.missing("debootstrap"):
        pytest.skip(
            f"debootstrap not installed (.ci/run apt-installs the tools), and the base image "
            f"{podman.BASE_TAG} it builds is not cached"
        )
    base = podman.base_image()
    problem = podman.container_start_problem(base)
    if problem is not None:
        pytest.skip(f"podman cannot start a container on this machine ({problem})")
    return podman.build_image(base)


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host side of /shared; the image's user (uid 1000) must be able to write to it."""
    path = tmp_path_factory.mktemp("shared")
    path.chmod(0o777)
    return path


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host side of /store, the container's store directory (written by uid 1000)."""
    path = tmp_path_factory.mktemp("store")
    path.chmod(0o777)
    return path


@pytest.fixture(scope="module")
def kernel(image: str, shared_dir: Path, store_dir: Path) -> Iterator[podman.Container]:
    """One container of the image as the README runs it, with `shared_dir` as /shared and a
    store volume at /store."""
    volumes = {shared_dir: "/shared", store_dir: "/store"}
    env = {"KERNEL_STORE_DIR": "/store"}
    with podman.running(image, env=env, volumes=volumes) as container:
        yield container


@pytest.fixture(scope="module")
def http(kernel: podman.Container) -> Iterator[httpx.Client]:
    """An HTTP client of `kernel`'s control plane, once it is healthy."""
    with httpx.Client(base_url=kernel.http_url, timeout=120.0) as client:
        kernel.wait_healthy(client)
        yield client
