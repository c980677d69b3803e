"""The seed README's examples (`seed/kernel_runtime_README.md`), as they were written there."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

SEED_EXECUTE_CODE = (
    "import polars as pl\ndf = flowfile.read_input()\nresult = df.collect()\n"
    "flowfile.publish_output(result)"
)

COMPLETE_EXAMPLE = """\
import polars as pl

# Read input data
df = flowfile.read_input()

# Transform the data
result = (
    df
    .filter(pl.col("status") == "active")
    .group_by("category")
    .agg(pl.col("amount").sum().alias("total"))
    .collect()
)

flowfile.log_info(f"Processed {result.height} categories")

# Store intermediate result as artifact
flowfile.publish_artifact("category_totals", result)

# Write output
flowfile.publish_output(result)
"""

SEED_SNIPPETS = """\
df = flowfile.read_input()
df = flowfile.read_input(name="customers")
df = flowfile.read_first(name="main")
inputs = flowfile.read_inputs()
assert sorted(inputs) == ["customers", "main"]

result = df.collect()
flowfile.publish_output(result)
flowfile.publish_output(result, name="cleaned_data")

model = {"weights": [0.1, 0.2]}
flowfile.publish_artifact("trained_model", model)
model = flowfile.read_artifact("trained_model")
artifacts = flowfile.list_artifacts()
flowfile.delete_artifact("trained_model")

flowfile.log("Processing started", level="INFO")
flowfile.log_info("Step 1 complete")
flowfile.log_warning("Missing values detected")
flowfile.log_error("Failed to process record")
"""


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """Stands in for the seed's `/shared` volume, holding `input.parquet`."""
    pl.DataFrame(
        {
            "status": ["active", "inactive", "active", "active", "active"],
            "category": ["a", "a", "b", "a", "c"],
            "amount": [10, 99, 5, 7, 1],
        }
    ).write_parquet(tmp_path / "input.parquet")
    return tmp_path


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert {"status": body["status"], "artifact_count": body["artifact_count"]} == {
        "status": "healthy",
        "artifact_count": 0,
    }
    assert isinstance(body["version"], str)


def test_execute_code(client, shared):
    response = client.post(
        "/execute",
        json={
            "node_id": "node_1",
            "code": SEED_EXECUTE_CODE,
            "input_paths": {"main": [str(shared / "input.parquet")]},
            "output_dir": str(shared / "output"),
            "flow_id": 1,
        },
    )

    assert response.status_code == 200
    body = response.json()
    assert isinstance(body.pop("execution_time_ms"), int | float)
    assert {
        k: body[k]
        for k in (
            "success",
            "output_paths",
            "published_artifacts",
            "deleted_artifacts",
            "stdout",
            "stderr",
        )
    } == {
        "success": True,
        "output_paths": [str(shared / "output" / "output_0.parquet")],
        "published_artifacts": [],
        "deleted_artifacts": [],
        "stdout": "",
        "stderr": "",
    }
    assert pl.read_parquet(shared / "output" / "output_0.parquet").equals(
        pl.read_parquet(shared / "input.parquet")
    )


def test_complete_example(client, shared):
    response = client.post(
        "/execute",
        json={
            "node_id": "node_1",
            "code": COMPLETE_EXAMPLE,
            "flow_id": 1,
            "input_paths": {"main": [str(shared / "input.parquet")]},
            "output_dir": str(shared / "output"),
        },
    )

    body = response.json()
    assert body["success"] is True, body["error"]
    assert body["output_paths"] == [str(shared / "output" / "output_0.parquet")]
    assert body["published_artifacts"] == ["category_totals"]
    assert [(r["level"], r["message"]) for r in body["logs"]] == [
        ("INFO", "Processed 3 categories")
    ]
    totals = pl.read_parquet(body["output_paths"][0]).sort("category")
    assert totals.to_dict(as_series=False) == {"category": ["a", "b", "c"], "total": [17, 5, 1]}
    [record] = client.get("/artifacts?flow_id=1").json()
    assert (record["name"], record["flow_id"], record["node_id"], record["type_name"]) == (
        "category_totals",
        1,
        "node_1",
        "DataFrame",
    )
    assert [r["name"] for r in client.get("/artifacts/node/node_1?flow_id=1").json()] == [
        "category_totals"
    ]


def test_the_flowfile_snippets_run(client, shared):
    inputs = {"main": [str(shared / "input.parquet")], "customers": [str(shared / "input.parquet")]}
    response = client.post(
        "/execute",
        json={
            "node_id": "node_1",
            "code": SEED_SNIPPETS,
            "flow_id": 1,
            "input_paths": inputs,
            "output_dir": str(shared / "output"),
        },
    )

    body = response.json()
    assert body["success"] is True, body["error"]
    assert body["output_paths"] == [
        str(shared / "output" / "output_0.parquet"),
        str(shared / "output" / "cleaned_data.parquet"),
    ]
    assert body["published_artifacts"] == []
    assert body["deleted_artifacts"] == ["trained_model"]
    assert [r["level"] for r in body["logs"]] == ["INFO", "INFO", "WARNING", "ERROR"]


def test_list_artifacts(client, run_code):
    run_code("flowfile.publish_artifact('a', 1)", node_id="node_1", flow_id=1)
    run_code("flowfile.publish_artifact('b', 2)", node_id="node_2", flow_id=2)

    assert sorted(r["name"] for r in client.get("/artifacts").json()) == ["a", "b"]
    assert [r["name"] for r in client.get("/artifacts?flow_id=1").json()] == ["a"]
    assert [r["name"] for r in client.get("/artifacts/node/node_1?flow_id=1").json()] == ["a"]


def test_clear_artifacts(client, run_code):
    for flow in (1, 2):
        for node in ("node_1", "node_2", "node_3"):
            run_code(f"flowfile.publish_artifact('{node}_art', 1)", node_id=node, flow_id=flow)

    removed = client.post(
        "/clear_node_artifacts", json={"node_ids": ["node_1", "node_2"], "flow_id": 1}
    )
    assert removed.status_code == 200
    assert sorted(removed.json()["removed"]) == ["node_1_art", "node_2_art"]

    by_flow = client.post("/clear?flow_id=1")
    assert by_flow.json()["removed"] == ["node_3_art"]

    everything = client.post("/clear")
    assert sorted(everything.json()["removed"]) == ["node_1_art", "node_2_art", "node_3_art"]
    assert client.get("/artifacts").json() == []
