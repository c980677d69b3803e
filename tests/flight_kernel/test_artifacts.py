"""ArtifactStore: live Python objects of a flow, keyed by flow and name."""

from __future__ import annotations

import numpy as np
import pytest

from flight_kernel.artifacts import ArtifactRecord, ArtifactStore
from flight_kernel.errors import Conflict, NotFound
from flight_kernel.store import Store


@pytest.fixture
def artifacts(tmp_path) -> ArtifactStore:
    return ArtifactStore(Store(str(tmp_path / "store")))


def _names(found) -> list[str]:
    return sorted(a.name for a in found)


def test_artifacts_are_keyed_by_flow_and_name(artifacts):
    artifacts.publish(1, "n", "model", "flow one")
    artifacts.publish(2, "n", "model", "flow two")
    assert artifacts.get(1, "model").obj == "flow one"
    assert artifacts.get(2, "model").obj == "flow two"


def test_artifacts_are_stored_as_is(artifacts):
    obj = {"weights": [1.0, 2.0]}
    artifacts.publish(1, "n", "model", obj)
    assert artifacts.get(1, "model").obj is obj


def test_another_node_publishing_an_existing_name_is_a_conflict(artifacts):
    artifacts.publish(1, "trainer", "model", 1)
    with pytest.raises(Conflict, match=r"'model' in flow 1 is already published by node 'trainer'"):
        artifacts.publish(1, "other", "model", 2)
    assert artifacts.get(1, "model").obj == 1


def test_the_same_node_may_publish_again(artifacts):
    artifacts.publish(1, "trainer", "model", 1)
    artifacts.publish(1, "trainer", "model", 2)
    assert artifacts.get(1, "model").obj == 2


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(7, "7", id="int-then-str"),
        pytest.param("7", 7, id="str-then-int"),
    ],
)
def test_node_ids_compare_by_string_form_when_publishing(artifacts, first, second):
    artifacts.publish(1, first, "model", 1)
    artifacts.publish(1, second, "model", 2)
    assert artifacts.get(1, "model").obj == 2


def test_replace_overrides_ownership(artifacts):
    artifacts.publish(1, "trainer", "model", 1)
    artifacts.publish(1, None, "model", 2, replace=True)
    assert artifacts.get(1, "model").obj == 2


def test_artifact_record_has_the_listing_fields(artifacts):
    art = artifacts.publish(3, 7, "arr", np.zeros(1000, dtype=np.float64))
    record = art.record()
    assert isinstance(record, ArtifactRecord)
    assert record.name == "arr"
    assert record.flow_id == 3
    assert record.node_id == 7
    assert record.type_name == "ndarray"
    assert record.module == "numpy"
    assert record.size_bytes == 8000
    assert record.ticket == "artifacts/3/arr"
    assert record.created_at.startswith("20")


def test_artifact_record_to_json_holds_every_field(artifacts):
    record = artifacts.publish(3, 7, "arr", np.zeros(1000, dtype=np.float64)).record()
    assert record.to_json() == {
        "name": "arr",
        "flow_id": 3,
        "node_id": 7,
        "type_name": "ndarray",
        "module": "numpy",
        "size_bytes": 8000,
        "created_at": record.created_at,
        "persisted": False,
        "ticket": "artifacts/3/arr",
    }


def test_find_by_flow_and_node(artifacts):
    artifacts.publish(1, 7, "a", 1)
    artifacts.publish(1, "7", "b", 2)
    artifacts.publish(1, "8", "c", 3)
    artifacts.publish(2, 7, "d", 4)

    assert _names(artifacts.find()) == ["a", "b", "c", "d"]
    assert _names(artifacts.find(flow_id=1)) == ["a", "b", "c"]
    assert _names(artifacts.find(flow_id=1, node_id=7)) == ["a", "b"]
    assert _names(artifacts.find(flow_id=1, node_id="7")) == ["a", "b"]
    assert _names(artifacts.find(node_id="7")) == ["a", "b", "d"]
    assert artifacts.find(flow_id=3) == []


def test_clear_nodes_in_one_flow(artifacts):
    artifacts.publish(1, "n1", "a", 1)
    artifacts.publish(1, 2, "b", 2)
    artifacts.publish(1, "n3", "c", 3)
    artifacts.publish(2, "n1", "d", 4)

    gone = artifacts.clear_nodes(["n1", "2"], flow_id=1)

    assert _names(gone) == ["a", "b"]
    assert _names(artifacts.find()) == ["c", "d"]


def test_clear_nodes_in_every_flow(artifacts):
    artifacts.publish(1, "n1", "a", 1)
    artifacts.publish(2, "n1", "b", 2)
    artifacts.publish(2, "n2", "c", 3)

    gone = artifacts.clear_nodes(["n1"])

    assert _names(gone) == ["a", "b"]
    assert _names(artifacts.find()) == ["c"]


def test_clear_nodes_leaves_uploaded_artifacts(artifacts):
    artifacts.publish(1, None, "uploaded", 1)
    assert artifacts.clear_nodes(["None"], flow_id=1) == []
    assert _names(artifacts.find()) == ["uploaded"]


def test_clear_everything(artifacts):
    artifacts.publish(1, "n", "a", 1)
    artifacts.publish(2, None, "b", 2)

    gone = artifacts.clear()

    assert _names(gone) == ["a", "b"]
    assert artifacts.find() == []
    assert artifacts.count() == 0


def test_clear_one_flow_keeps_other_flows(artifacts):
    artifacts.publish(1, "n", "a", 1)
    artifacts.publish(1, None, "b", 2)
    artifacts.publish(2, "n", "c", 3)

    gone = artifacts.clear(flow_id=1)

    assert _names(gone) == ["a", "b"]
    assert _names(artifacts.find()) == ["c"]
    assert artifacts.count() == 1


def test_count_counts_every_flows_artifacts(artifacts):
    assert artifacts.count() == 0
    artifacts.publish(1, "n", "a", 1)
    artifacts.publish(1, "n", "a", 2)  # replaced, not added
    artifacts.publish(2, "n", "a", 3)
    assert artifacts.count() == 2


def test_delete_returns_it(artifacts):
    artifacts.publish(1, "n", "a", [1])
    assert artifacts.delete(1, "a").obj == [1]
    assert artifacts.find() == []


@pytest.mark.parametrize(
    "act",
    [
        pytest.param(lambda s: s.get(1, "missing"), id="get"),
        pytest.param(lambda s: s.delete(1, "missing"), id="delete"),
    ],
)
def test_missing_artifact_message_names_what_exists_in_the_flow(artifacts, act):
    artifacts.publish(1, "n", "beta", 1)
    artifacts.publish(1, "n", "alpha", 2)
    artifacts.publish(2, "n", "other_flow", 3)
    with pytest.raises(NotFound) as info:
        act(artifacts)
    assert str(info.value) == "no artifact 'missing' in flow 1 (known: alpha, beta)"


def test_missing_artifact_in_an_empty_flow_says_none(artifacts):
    with pytest.raises(NotFound) as info:
        artifacts.get(5, "x")
    assert str(info.value) == "no artifact 'x' in flow 5 (known: none)"
