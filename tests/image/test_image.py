"""The container image, built and run with Podman, checked through its published ports."""

from __future__ import annotations

from pathlib import Path

import httpx
import polars as pl
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.ipc as ipc
import pytest

from tests.control.test_seed_examples import COMPLETE_EXAMPLE
from tests.helpers import execute
from tests.image import podman
from tests.image.constraints import pinned_version

pytestmark = pytest.mark.image

CONSTRAINTS = podman.ROOT / "constraints.txt"
EXTRA_PACKAGE = "tabulate"  # small, pure Python, and not a dependency of the image
USES_EXTRA_PACKAGE = "import tabulate\nprint(tabulate.tabulate([['kernel', 7]]))"


def test_open_without_a_token_warns_at_start(http: httpx.Client, kernel: podman.Container) -> None:
    # The image binds 0.0.0.0 and `kernel` runs without KERNEL_AUTH_TOKEN.
    logs = kernel.logs()
    assert "listening on 0.0.0.0 without KERNEL_AUTH_TOKEN" in logs
    assert "can run code in this service; set KERNEL_AUTH_TOKEN" in logs


def test_health_and_healthcheck(kernel: podman.Container, http: httpx.Client) -> None:
    body = http.get("/health").json()
    assert body["status"] == "healthy"
    assert body["artifact_count"] == 0
    # The image's own HEALTHCHECK (curl inside the container) passes too.
    assert podman.podman("healthcheck", "run", kernel.name).returncode == 0


def test_complete_example_over_shared_volume(http: httpx.Client, shared_dir: Path) -> None:
    pl.DataFrame(
        {
            "status": ["active", "active", "inactive", "active"],
            "category": ["a", "b", "a", "a"],
            "amount": [1, 2, 40, 3],
        }
    ).write_parquet(shared_dir / "input.parquet")

    result = execute(
        http,
        COMPLETE_EXAMPLE,
        input_paths={"main": ["/shared/input.parquet"]},
        output_dir="/shared/output",
        flow_id=1,
    )

    assert result["success"], result
    assert result["output_paths"] == ["/shared/output/output_0.parquet"]
    assert result["published_artifacts"] == ["category_totals"]
    written = pl.read_parquet(shared_dir / "output" / "output_0.parquet").sort("category")
    assert written.to_dicts() == [{"category": "a", "total": 4}, {"category": "b", "total": 2}]
    listed = http.get("/artifacts").json()
    assert [(a["name"], a["flow_id"], a["node_id"]) for a in listed] == [
        ("category_totals", 1, "node_1")
    ]


def test_flight_round_trip(kernel: podman.Container) -> None:
    table = pa.table({"x": [1, 2, 3], "y": ["a", "b", None]})
    with flight.connect(kernel.flight_url) as client:
        writer, _ = client.do_put(flight.FlightDescriptor.for_path("tables", "t"), table.schema)
        writer.write_table(table)
        writer.close()
        assert client.do_get(flight.Ticket(b"tables/t")).read_all().equals(table)


def test_the_store_is_the_mounted_volume(
    kernel: podman.Container, http: httpx.Client, store_dir: Path
) -> None:
    table = pa.table({"x": [4, 5]})
    with flight.connect(kernel.flight_url) as client:
        writer, _ = client.do_put(flight.FlightDescriptor.for_path("tables", "kept"), table.schema)
        writer.write_table(table)
        writer.close()
    store = http.get("/health").json()["store"]
    assert (store["dir"], store["durable"]) == ("/store", True)
    on_host = ipc.open_file(pa.memory_map(str(store_dir / "tables" / "kept.arrow")))
    assert on_host.read_all().equals(table)


def test_extra_package_is_not_preinstalled(http: httpx.Client) -> None:
    result = execute(http, USES_EXTRA_PACKAGE)
    assert not result["success"]
    assert result["error"].startswith("ModuleNotFoundError"), result


def test_kernel_packages_installed_at_start(image: str) -> None:
    with (
        podman.running(image, env={"KERNEL_PACKAGES": EXTRA_PACKAGE}) as container,
        httpx.Client(base_url=container.http_url, timeout=120.0) as http,
    ):
        container.wait_healthy(http)
        result = execute(http, USES_EXTRA_PACKAGE)
        assert result["success"], result
        assert "kernel" in result["stdout"]
        assert f"installing KERNEL_PACKAGES: {EXTRA_PACKAGE}" in container.logs()


def test_sigterm_stops_the_server_cleanly(image: str) -> None:
    with (
        podman.running(image) as container,
        httpx.Client(base_url=container.http_url, timeout=120.0) as http,
    ):
        container.wait_healthy(http)
        # `podman stop` sends SIGTERM to PID 1: the server itself, since entrypoint.sh execs it.
        podman.podman("stop", "--time", "30", container.name)
        assert container.exit_code() == 0, container.logs()


def test_kernel_packages_never_replace_a_pinned_package(image: str) -> None:
    # Without the image's constraints pip would install an older pyarrow in place of its own.
    version = pinned_version(CONSTRAINTS.read_text(), "pyarrow")
    proc = podman.run_to_exit(image, env={"KERNEL_PACKAGES": f"pyarrow<{version}"})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "ERROR: pip install of KERNEL_PACKAGES failed (pyarrow<" in output
    assert f"(constraint) pyarrow=={version}" in output  # pip names the package and its pin
    assert "Uvicorn running" not in output
