"""Store: tables, outputs and artifacts held by the kernel."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from flight_kernel.errors import Conflict, NotFound
from flight_kernel.paths import ArtifactPath, OutputPath, TablePath
from flight_kernel.store import MAX_BATCH_ROWS, Store


@pytest.fixture
def store() -> Store:
    return Store()


def _names(artifacts) -> list[str]:
    return sorted(a.name for a in artifacts)


# -- tables and outputs ------------------------------------------------------------------


def _served(store: Store, path: TablePath | OutputPath) -> pa.Table:
    """The table as the Flight server hands it to clients."""
    return store.get_table(path).client()


def _put_outputs(store: Store, *paths: OutputPath) -> None:
    for i, path in enumerate(paths):
        store.put_output(path, pa.table({"x": [i]}))


def test_an_uploaded_table_is_served_back_unchanged(store):
    table = pa.table({"id": [1, 2, 3], "name": ["a", "b", None]})
    store.put_table(TablePath("people"), table)
    served = _served(store, TablePath("people"))
    assert served.schema == table.schema
    assert served.equals(table)


def test_put_table_replaces_the_table_at_that_path(store):
    store.put_table(TablePath("t"), pa.table({"x": [1]}))
    store.put_table(TablePath("t"), pa.table({"y": ["new"]}))
    assert _served(store, TablePath("t")).to_pydict() == {"y": ["new"]}


def test_put_output_replaces_the_output_at_that_path(store):
    store.put_output(OutputPath(1, "n", "o"), pa.table({"x": [1]}))
    store.put_output(OutputPath(1, "n", "o"), pa.table({"x": [2, 3]}))
    assert _served(store, OutputPath(1, "n", "o")).to_pydict() == {"x": [2, 3]}


def test_outputs_and_tables_are_separate(store):
    store.put_output(OutputPath(1, "n", "t"), pa.table({"x": [1]}))
    with pytest.raises(NotFound, match="tables/t"):
        store.get_table(TablePath("t"))


def test_clear_node_outputs_drops_only_that_nodes_outputs(store):
    _put_outputs(
        store,
        OutputPath(1, "a", "output_0"),
        OutputPath(1, "a", "named"),
        OutputPath(1, "b", "output_0"),
        OutputPath(2, "a", "output_0"),
    )

    gone = store.clear_node_outputs(1, "a")

    assert sorted(map(str, gone)) == ["outputs/1/a/named", "outputs/1/a/output_0"]
    assert sorted(map(str, store.paths("outputs/"))) == [
        "outputs/1/b/output_0",
        "outputs/2/a/output_0",
    ]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(TablePath("nope"), id="table"),
        pytest.param(OutputPath(1, "n", "nope"), id="output"),
    ],
)
def test_missing_table_is_not_found_naming_the_path(store, path):
    with pytest.raises(NotFound, match=f"nothing stored at {path}"):
        store.get_table(path)


def test_big_batches_are_split_to_max_batch_rows(store):
    rows = 2 * MAX_BATCH_ROWS + 5
    table = pa.table({"x": pa.array(np.arange(rows, dtype=np.int32))})
    assert table.column("x").num_chunks == 1

    store.put_table(TablePath("big"), table)

    served = _served(store, TablePath("big"))
    assert [len(b) for b in served.to_batches()] == [MAX_BATCH_ROWS, MAX_BATCH_ROWS, 5]
    assert served.equals(table)


def test_big_outputs_are_split_to_max_batch_rows(store):
    rows = MAX_BATCH_ROWS + 1
    store.put_output(
        OutputPath(1, "n", "o"), pa.table({"x": pa.array(np.ones(rows, dtype=np.int8))})
    )
    served = _served(store, OutputPath(1, "n", "o"))
    assert [len(b) for b in served.to_batches()] == [MAX_BATCH_ROWS, 1]


# -- artifacts ---------------------------------------------------------------------------


def test_artifacts_are_keyed_by_flow_and_name(store):
    store.publish_artifact(1, "n", "model", "flow one")
    store.publish_artifact(2, "n", "model", "flow two")
    assert store.get_artifact(1, "model").obj == "flow one"
    assert store.get_artifact(2, "model").obj == "flow two"


def test_artifacts_are_stored_as_is(store):
    obj = {"weights": [1.0, 2.0]}
    store.publish_artifact(1, "n", "model", obj)
    assert store.get_artifact(1, "model").obj is obj


def test_another_node_publishing_an_existing_name_is_a_conflict(store):
    store.publish_artifact(1, "trainer", "model", 1)
    with pytest.raises(Conflict, match=r"'model' in flow 1 is already published by node 'trainer'"):
        store.publish_artifact(1, "other", "model", 2)
    assert store.get_artifact(1, "model").obj == 1


def test_the_same_node_may_publish_again(store):
    store.publish_artifact(1, "trainer", "model", 1)
    store.publish_artifact(1, "trainer", "model", 2)
    assert store.get_artifact(1, "model").obj == 2


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(7, "7", id="int-then-str"),
        pytest.param("7", 7, id="str-then-int"),
    ],
)
def test_node_ids_compare_by_string_form_when_publishing(store, first, second):
    store.publish_artifact(1, first, "model", 1)
    store.publish_artifact(1, second, "model", 2)
    assert store.get_artifact(1, "model").obj == 2


def test_replace_overrides_ownership(store):
    store.publish_artifact(1, "trainer", "model", 1)
    store.publish_artifact(1, None, "model", 2, replace=True)
    assert store.get_artifact(1, "model").obj == 2


def test_artifact_record_has_the_listing_fields(store):
    art = store.publish_artifact(3, 7, "arr", np.zeros(1000, dtype=np.float64))
    record = art.record()
    assert record["name"] == "arr"
    assert record["flow_id"] == 3
    assert record["node_id"] == 7
    assert record["type_name"] == "ndarray"
    assert record["size_bytes"] == 8000
    assert record["ticket"] == "artifacts/3/arr"
    assert record["created_at"].startswith("20")


def test_list_artifacts_by_flow_and_node(store):
    store.publish_artifact(1, 7, "a", 1)
    store.publish_artifact(1, "7", "b", 2)
    store.publish_artifact(1, "8", "c", 3)
    store.publish_artifact(2, 7, "d", 4)

    assert _names(store.list_artifacts()) == ["a", "b", "c", "d"]
    assert _names(store.list_artifacts(flow_id=1)) == ["a", "b", "c"]
    assert _names(store.list_artifacts(flow_id=1, node_id=7)) == ["a", "b"]
    assert _names(store.list_artifacts(flow_id=1, node_id="7")) == ["a", "b"]
    assert _names(store.list_artifacts(node_id="7")) == ["a", "b", "d"]
    assert store.list_artifacts(flow_id=3) == []


def test_clear_everything(store):
    store.put_table(TablePath("t"), pa.table({"x": [1]}))
    store.put_output(OutputPath(1, "n", "o"), pa.table({"x": [1]}))
    store.publish_artifact(1, "n", "a", 1)
    store.publish_artifact(2, "n", "b", 2)

    removed = store.clear()

    assert sorted(removed["removed"]) == ["a", "b"]
    assert removed["removed_outputs"] == ["outputs/1/n/o"]
    assert removed["removed_tables"] == ["t"]
    assert store.paths() == []
    assert store.counts() == {"artifact_count": 0, "table_count": 0, "output_count": 0}


def test_clear_one_flow_keeps_other_flows_and_tables(store):
    store.put_table(TablePath("t"), pa.table({"x": [1]}))
    _put_outputs(store, OutputPath(1, "n", "o"), OutputPath(2, "n", "o"))
    store.publish_artifact(1, "n", "a", 1)
    store.publish_artifact(2, "n", "b", 2)

    removed = store.clear(flow_id=1)

    assert removed["removed"] == ["a"]
    assert removed["removed_artifacts"] == [{"flow_id": 1, "name": "a"}]
    assert removed["removed_outputs"] == ["outputs/1/n/o"]
    assert removed["removed_tables"] == []
    assert sorted(map(str, store.paths())) == ["artifacts/2/b", "outputs/2/n/o", "tables/t"]


def test_clear_node_artifacts_in_one_flow(store):
    store.publish_artifact(1, "n1", "a", 1)
    store.publish_artifact(1, 2, "b", 2)
    store.publish_artifact(1, "n3", "c", 3)
    store.publish_artifact(2, "n1", "d", 4)

    gone = store.clear_node_artifacts(["n1", "2"], flow_id=1)

    assert _names(gone) == ["a", "b"]
    assert _names(store.list_artifacts()) == ["c", "d"]


def test_clear_node_artifacts_in_every_flow(store):
    store.publish_artifact(1, "n1", "a", 1)
    store.publish_artifact(2, "n1", "b", 2)
    store.publish_artifact(2, "n2", "c", 3)

    gone = store.clear_node_artifacts(["n1"])

    assert _names(gone) == ["a", "b"]
    assert _names(store.list_artifacts()) == ["c"]


def test_clear_node_artifacts_leaves_uploaded_artifacts(store):
    store.publish_artifact(1, None, "uploaded", 1)
    assert store.clear_node_artifacts(["None"], flow_id=1) == []
    assert _names(store.list_artifacts()) == ["uploaded"]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(TablePath("t"), id="table"),
        pytest.param(OutputPath(1, "n", "o"), id="output"),
        pytest.param(ArtifactPath(1, "a"), id="artifact"),
    ],
)
def test_delete_removes_what_is_at_a_path(store, path):
    store.put_table(TablePath("t"), pa.table({"x": [1]}))
    store.put_output(OutputPath(1, "n", "o"), pa.table({"x": [1]}))
    store.publish_artifact(1, "n", "a", 1)

    store.delete(path)

    assert path not in store.paths()
    assert len(store.paths()) == 2
    with pytest.raises(NotFound):
        store.delete(path)


def test_delete_artifact_returns_it(store):
    store.publish_artifact(1, "n", "a", [1])
    assert store.delete_artifact(1, "a").obj == [1]
    assert store.list_artifacts() == []


@pytest.mark.parametrize(
    "act",
    [
        pytest.param(lambda s: s.get_artifact(1, "missing"), id="get"),
        pytest.param(lambda s: s.delete_artifact(1, "missing"), id="delete"),
    ],
)
def test_missing_artifact_message_names_what_exists_in_the_flow(store, act):
    store.publish_artifact(1, "n", "beta", 1)
    store.publish_artifact(1, "n", "alpha", 2)
    store.publish_artifact(2, "n", "other_flow", 3)
    with pytest.raises(NotFound) as info:
        act(store)
    assert str(info.value) == "no artifact 'missing' in flow 1 (known: alpha, beta)"


def test_missing_artifact_in_an_empty_flow_says_none(store):
    with pytest.raises(NotFound) as info:
        store.get_artifact(5, "x")
    assert str(info.value) == "no artifact 'x' in flow 5 (known: none)"


def test_paths_filters_by_prefix(store):
    store.put_table(TablePath("t"), pa.table({"x": [1]}))
    store.publish_artifact(1, "n", "a", 1)
    store.publish_artifact(12, "n", "b", 1)
    assert sorted(map(str, store.paths("artifacts/1"))) == ["artifacts/1/a", "artifacts/12/b"]
    assert [str(p) for p in store.paths("tables/")] == ["tables/t"]
