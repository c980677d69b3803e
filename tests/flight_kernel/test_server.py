"""The Flight server through a pyarrow Flight client: data, listings, actions, errors, auth."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_kernel.kernel import Kernel
from flight_kernel.serialization import (
    PICKLE,
    PICKLE_COLUMN,
    SERIALIZER_KEY,
    TYPE_KEY,
    from_arrow,
    to_arrow,
)
from flight_kernel.server import REUSE_CONNECTION, KernelFlightServer
from flight_kernel.settings import Settings
from flight_kernel.tables import MAX_BATCH_ROWS
from tests.helpers import flight_action


def put(
    client: flight.FlightClient,
    path: str,
    table: pa.Table,
    options: flight.FlightCallOptions | None = None,
) -> None:
    descriptor = flight.FlightDescriptor.for_path(*path.split("/"))
    writer, _ = client.do_put(descriptor, table.schema, options)
    with writer:
        writer.write_table(table)


def get(
    client: flight.FlightClient, path: str, options: flight.FlightCallOptions | None = None
) -> pa.Table:
    return client.do_get(flight.Ticket(path.encode()), options).read_all()


def info_of(client: flight.FlightClient, path: str) -> flight.FlightInfo:
    return client.get_flight_info(flight.FlightDescriptor.for_path(*path.split("/")))


def assert_still_serves(client: flight.FlightClient) -> None:
    """After a refused call the same connection still gets good answers."""
    table = pa.table({"ok": [1, 2]})
    put(client, "tables/after_error", table)
    assert get(client, "tables/after_error").equals(table)
    assert flight_action(client, "health")["status"] == "healthy"


def _tz(unit: str, tz: str, values: list[datetime | None]) -> pa.Array:
    return pa.array(values, pa.timestamp(unit, tz=tz))


TABLES = [
    pytest.param(
        pa.table(
            {
                "i": pa.array([1, None, 3], pa.int64()),
                "f": pa.array([None, 1.5, None], pa.float64()),
                "s": pa.array(["a", None, "c"]),
                "b": pa.array([True, None, False]),
                "n": pa.nulls(3),
            }
        ),
        id="nulls",
    ),
    pytest.param(
        pa.table(
            {
                "l": pa.array([[1, 2], None, []], pa.list_(pa.int32())),
                "st": pa.array(
                    [{"a": 1, "b": "x"}, None, {"a": None, "b": "z"}],
                    pa.struct([("a", pa.int64()), ("b", pa.string())]),
                ),
                "ls": pa.array([[{"k": "p"}], [], None], pa.list_(pa.struct([("k", pa.string())]))),
                "ll": pa.array(
                    [[[1.0]], [[2.0, None]], None], pa.large_list(pa.list_(pa.float64()))
                ),
            }
        ),
        id="nested",
    ),
    pytest.param(
        pa.table(
            {
                "d": pa.array(["red", "blue", "red", None]).dictionary_encode(),
                "d8": pa.DictionaryArray.from_arrays(
                    pa.array([0, 1, 1, 0], pa.int8()), pa.array(["x", "y"])
                ),
            }
        ),
        id="dictionary",
    ),
    pytest.param(
        pa.table(
            {
                "s": pa.array(["", "caf\u00e9", None, "x" * 1000], pa.string()),
                "ls": pa.array(["a", None, "\u2603", "long " * 50], pa.large_string()),
            }
        ),
        id="strings",
    ),
    pytest.param(
        pa.table(
            {
                "utc": _tz("us", "UTC", [datetime(2024, 1, 1, 12), None, datetime(1970, 1, 1)]),
                "berlin": _tz(
                    "ns",
                    "Europe/Berlin",
                    [datetime(2024, 3, 31, 1, 30), None, datetime(2024, 10, 27, 2, 30)],
                ),
                "offset": _tz("s", "+05:30", [datetime(2000, 2, 29), datetime(2038, 1, 19), None]),
                "naive": pa.array([datetime(2020, 1, 1), None, None], pa.timestamp("ms")),
            }
        ),
        id="timestamps-tz",
    ),
    pytest.param(
        pa.table({"a": [1, 2], "b": ["p", "q"]}).replace_schema_metadata({"origin": "test"}),
        id="schema-metadata",
    ),
    pytest.param(
        pa.table({"a": pa.array([], pa.int64()), "s": pa.array([], pa.string())}), id="empty"
    ),
]


@pytest.mark.parametrize("table", TABLES)
def test_do_get_returns_what_do_put_stored(
    flight_client: flight.FlightClient, table: pa.Table
) -> None:
    put(flight_client, "tables/t", table)
    back = get(flight_client, "tables/t")
    assert back.schema.equals(table.schema, check_metadata=True)
    assert back.equals(table)
    assert back.to_pylist() == table.to_pylist()


def test_do_put_replaces_the_table_at_a_path(flight_client: flight.FlightClient) -> None:
    put(flight_client, "tables/t", pa.table({"a": [1]}))
    replacement = pa.table({"b": ["new", "rows"]})
    put(flight_client, "tables/t", replacement)
    assert get(flight_client, "tables/t").equals(replacement)


def test_a_large_table_comes_back_equal_in_batches_of_at_most_a_million_rows(
    flight_client: flight.FlightClient,
) -> None:
    n = 2 * MAX_BATCH_ROWS + 12345
    table = pa.table({"id": np.arange(n, dtype=np.int64), "v": np.arange(n, dtype=np.float32) / 7})
    assert table.column("id").num_chunks == 1  # one batch of 2.1M rows goes up
    put(flight_client, "tables/big", table)
    reader = flight_client.do_get(flight.Ticket(b"tables/big"))
    batches = [chunk.data for chunk in reader]
    assert len(batches) >= 3
    assert max(b.num_rows for b in batches) <= MAX_BATCH_ROWS == 1 << 20
    assert pa.Table.from_batches(batches).equals(table)


# -- artifacts ---------------------------------------------------------------------------


def test_table_artifact_put_then_get_keeps_its_values(flight_client: flight.FlightClient) -> None:
    table = pa.table({"k": ["a", "b"], "v": [1.0, None]})
    put(flight_client, "artifacts/1/lookup", table)
    back = get(flight_client, "artifacts/1/lookup")
    assert back.equals(table)
    assert back.schema.metadata[SERIALIZER_KEY] == b"arrow"
    restored = from_arrow(back)
    assert isinstance(restored, pa.Table)
    assert restored.equals(table)


def test_pickled_artifact_put_then_get_restores_the_object(
    flight_client: flight.FlightClient,
) -> None:
    obj = {"threshold": 0.25, "classes": ["cat", "dog"], "weights": np.arange(4.0)}
    put(flight_client, "artifacts/2/cfg", to_arrow(obj, "artifacts/2/cfg"))
    back = get(flight_client, "artifacts/2/cfg")
    assert back.schema.metadata[SERIALIZER_KEY] == PICKLE
    assert back.schema.metadata[TYPE_KEY] == b"builtins.dict"
    restored = from_arrow(back)
    assert restored["threshold"] == 0.25
    assert restored["classes"] == ["cat", "dog"]
    np.testing.assert_array_equal(restored["weights"], np.arange(4.0))


def test_user_code_reads_a_pickled_artifact_as_its_object(
    flight_client: flight.FlightClient,
) -> None:
    put(flight_client, "artifacts/2/cfg", to_arrow({"n": 3, "name": "x"}, "cfg"))
    result = flight_action(
        flight_client,
        "execute",
        {
            "node_id": "reader",
            "flow_id": 2,
            "code": "cfg = flowfile.read_artifact('cfg')\nprint(type(cfg).__name__, cfg['n'])",
        },
    )
    assert result["success"], result["error"]
    assert result["stdout"] == "dict 3\n"


# -- get_flight_info and list_flights ------------------------------------------------------


def test_flight_info_of_a_table(flight_client: flight.FlightClient) -> None:
    table = pa.table({"a": np.arange(1000, dtype=np.int64), "b": np.ones(1000)})
    put(flight_client, "tables/nums", table)
    info = info_of(flight_client, "tables/nums")
    assert info.schema.equals(table.schema)
    assert info.total_records == 1000
    assert info.total_bytes == table.nbytes
    assert info.descriptor.path == [b"tables", b"nums"]
    [endpoint] = info.endpoints
    assert endpoint.ticket.ticket == b"tables/nums"
    assert [loc.uri for loc in endpoint.locations] == [REUSE_CONNECTION.encode()]
    assert REUSE_CONNECTION == "arrow-flight-reuse-connection://?"


def test_flight_info_endpoint_ticket_fetches_the_data(flight_client: flight.FlightClient) -> None:
    table = pa.table({"a": [1, 2, 3]})
    put(flight_client, "tables/t", table)
    [endpoint] = info_of(flight_client, "tables/t").endpoints
    assert flight_client.do_get(endpoint.ticket).read_all().equals(table)


def test_flight_info_carries_the_advertised_location_too() -> None:
    settings = Settings(flight_port=0, advertise_location="grpc://kernel-7.internal:8815")
    with (
        KernelFlightServer(Kernel(settings)) as server,
        flight.connect(f"grpc://127.0.0.1:{server.port}") as client,
    ):
        put(client, "tables/t", pa.table({"a": [1]}))
        [endpoint] = info_of(client, "tables/t").endpoints
        assert [loc.uri for loc in endpoint.locations] == [
            b"arrow-flight-reuse-connection://?",
            b"grpc://kernel-7.internal:8815",
        ]


def test_flight_info_of_a_table_artifact(flight_client: flight.FlightClient) -> None:
    table = pa.table({"a": [1, 2, 3, 4]})
    put(flight_client, "artifacts/1/t", table)
    info = info_of(flight_client, "artifacts/1/t")
    assert info.schema.equals(table.schema)
    assert info.total_records == 4
    assert info.endpoints[0].ticket.ticket == b"artifacts/1/t"


def test_flight_info_of_an_object_artifact_is_its_binary_form_with_unknown_size(
    flight_client: flight.FlightClient,
) -> None:
    result = flight_action(
        flight_client,
        "execute",
        {"node_id": "n", "flow_id": 5, "code": "flowfile.publish_artifact('cfg', {'a': 1})"},
    )
    assert result["success"], result["error"]
    info = info_of(flight_client, "artifacts/5/cfg")
    assert info.total_records == 1
    assert info.total_bytes == -1
    assert info.schema.names == [PICKLE_COLUMN]
    assert pa.types.is_large_binary(info.schema.field(PICKLE_COLUMN).type)
    assert info.schema.metadata[SERIALIZER_KEY] == PICKLE
    assert info.schema.metadata[TYPE_KEY] == b"builtins.dict"
    [endpoint] = info.endpoints
    assert endpoint.ticket.ticket == b"artifacts/5/cfg"
    assert from_arrow(flight_client.do_get(endpoint.ticket).read_all()) == {"a": 1}


@pytest.fixture
def stocked(flight_client: flight.FlightClient) -> flight.FlightClient:
    put(flight_client, "tables/a", pa.table({"x": [1]}))
    put(flight_client, "tables/b", pa.table({"x": [1, 2]}))
    put(flight_client, "artifacts/1/m", to_arrow([1, 2, 3], "m"))
    put(flight_client, "artifacts/12/m", pa.table({"y": [1.0]}))
    result = flight_action(
        flight_client,
        "execute",
        {
            "node_id": "n1",
            "flow_id": 1,
            "code": "import polars as pl\nflowfile.publish_output(pl.DataFrame({'z': [1]}), 'o')",
        },
    )
    assert result["success"], result["error"]
    return flight_client


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        pytest.param(
            b"",
            {"tables/a", "tables/b", "artifacts/1/m", "artifacts/12/m", "outputs/1/n1/o"},
            id="everything",
        ),
        pytest.param(b"tables/", {"tables/a", "tables/b"}, id="tables"),
        pytest.param(b"artifacts/1/", {"artifacts/1/m"}, id="one-flow"),
        pytest.param(b"artifacts/1", {"artifacts/1/m", "artifacts/12/m"}, id="plain-prefix"),
        pytest.param(b"outputs/1/n1/", {"outputs/1/n1/o"}, id="outputs"),
        pytest.param(b"nothing-here", set(), id="no-match"),
    ],
)
def test_list_flights_by_prefix(
    stocked: flight.FlightClient, prefix: bytes, expected: set[str]
) -> None:
    infos = list(stocked.list_flights(prefix))
    assert {b"/".join(i.descriptor.path).decode() for i in infos} == expected
    assert {i.endpoints[0].ticket.ticket.decode() for i in infos} == expected


def test_list_flights_gives_schema_and_counts(stocked: flight.FlightClient) -> None:
    [info] = stocked.list_flights(b"tables/b")
    assert info.schema.names == ["x"]
    assert info.total_records == 2


# -- actions ------------------------------------------------------------------------------


def test_delete_action_removes_a_table(flight_client: flight.FlightClient) -> None:
    put(flight_client, "tables/gone", pa.table({"a": [1]}))
    assert flight_action(flight_client, "delete", {"path": "tables/gone"}) == {
        "deleted": "tables/gone"
    }
    with pytest.raises(KeyError, match="tables/gone"):
        get(flight_client, "tables/gone")
    assert list(flight_client.list_flights(b"tables/")) == []


def test_delete_action_removes_an_artifact(flight_client: flight.FlightClient) -> None:
    put(flight_client, "artifacts/3/m", to_arrow({"a": 1}, "m"))
    assert flight_action(flight_client, "delete", {"path": "artifacts/3/m"}) == {
        "deleted": "artifacts/3/m"
    }
    assert flight_action(flight_client, "list_artifacts", {"flow_id": 3}) == []


def test_delete_of_nothing_is_not_found(flight_client: flight.FlightClient) -> None:
    with pytest.raises(KeyError, match="tables/never"):
        flight_action(flight_client, "delete", {"path": "tables/never"})
    assert_still_serves(flight_client)


def test_list_actions_names_the_control_operations(flight_client: flight.FlightClient) -> None:
    names = {a.type for a in flight_client.list_actions()}
    assert names >= {
        "execute",
        "list_artifacts",
        "clear",
        "clear_node_artifacts",
        "interrupt",
        "health",
        "delete",
    }


# -- errors on the wire -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("tables/missing", id="table"),
        pytest.param("outputs/1/node_1/missing", id="output"),
    ],
)
def test_do_get_of_an_empty_path_is_key_error_naming_it(
    flight_client: flight.FlightClient, path: str
) -> None:
    with pytest.raises(KeyError) as info:
        get(flight_client, path)
    assert isinstance(info.value, pa.lib.ArrowKeyError)
    assert path in str(info.value)
    assert_still_serves(flight_client)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("tables/missing", id="table"),
        pytest.param("outputs/1/node_1/missing", id="output"),
    ],
)
def test_flight_info_of_an_empty_path_is_key_error_naming_it(
    flight_client: flight.FlightClient, path: str
) -> None:
    with pytest.raises(pa.lib.ArrowKeyError) as info:
        info_of(flight_client, path)
    assert path in str(info.value)
    assert_still_serves(flight_client)


def test_missing_artifact_is_key_error_naming_it(flight_client: flight.FlightClient) -> None:
    put(flight_client, "artifacts/9/present", to_arrow(1, "present"))
    with pytest.raises(pa.lib.ArrowKeyError) as get_error:
        get(flight_client, "artifacts/9/absent")
    with pytest.raises(pa.lib.ArrowKeyError) as info_error:
        info_of(flight_client, "artifacts/9/absent")
    for error in (get_error, info_error):
        message = str(error.value)
        assert "'absent'" in message
        assert "flow 9" in message
        assert "present" in message  # and says what exists
    assert_still_serves(flight_client)


BAD_TICKETS = [
    pytest.param(b"", "empty Flight path", id="empty"),
    pytest.param(b"\xff\xfe", "not valid UTF-8", id="not-utf8"),
    pytest.param(b"files/x", "unknown Flight path kind 'files'", id="unknown-kind"),
    pytest.param(b"tables/a/b", "has 3 segments", id="wrong-count"),
    pytest.param(b"tables/..", "'..'", id="dotdot"),
    pytest.param(b"artifacts/x/m", "flow id 'x'", id="flow-id-not-int"),
]


@pytest.mark.parametrize(("ticket", "says"), BAD_TICKETS)
def test_malformed_ticket_is_server_error_naming_the_problem(
    flight_client: flight.FlightClient, ticket: bytes, says: str
) -> None:
    with pytest.raises(flight.FlightServerError) as info:
        flight_client.do_get(flight.Ticket(ticket)).read_all()
    assert says in str(info.value)
    assert "Traceback" not in str(info.value)
    assert_still_serves(flight_client)


BAD_DESCRIPTORS = [
    pytest.param(
        flight.FlightDescriptor.for_path("files", "x"),
        "unknown Flight path kind 'files'",
        id="unknown-kind",
    ),
    pytest.param(
        flight.FlightDescriptor.for_path("tables", "a", "b"), "has 3 segments", id="wrong-count"
    ),
    pytest.param(flight.FlightDescriptor.for_path("tables", ".."), "'..'", id="dotdot"),
    pytest.param(
        flight.FlightDescriptor.for_path("artifacts", "one", "m"),
        "flow id 'one'",
        id="flow-id-not-int",
    ),
    pytest.param(
        flight.FlightDescriptor.for_command(b"SELECT 1"), "only path descriptors", id="command"
    ),
]


@pytest.mark.parametrize(("descriptor", "says"), BAD_DESCRIPTORS)
def test_malformed_descriptor_in_get_flight_info_is_server_error(
    flight_client: flight.FlightClient, descriptor: flight.FlightDescriptor, says: str
) -> None:
    with pytest.raises(flight.FlightServerError) as info:
        flight_client.get_flight_info(descriptor)
    assert says in str(info.value)
    assert "Traceback" not in str(info.value)
    assert_still_serves(flight_client)


@pytest.mark.parametrize(
    ("descriptor", "says"),
    [
        *BAD_DESCRIPTORS,
        pytest.param(
            flight.FlightDescriptor.for_path("outputs", "1", "n", "x"),
            "written by executions only",
            id="outputs-refused",
        ),
    ],
)
def test_malformed_or_refused_do_put_is_server_error(
    flight_client: flight.FlightClient, descriptor: flight.FlightDescriptor, says: str
) -> None:
    table = pa.table({"a": [1, 2]})
    with pytest.raises(flight.FlightServerError) as info:
        writer, _ = flight_client.do_put(descriptor, table.schema)
        with writer:
            writer.write_table(table)
    assert says in str(info.value)
    assert "Traceback" not in str(info.value)
    assert list(flight_client.list_flights(b"outputs/")) == []
    assert_still_serves(flight_client)


def test_descriptor_path_not_utf8_is_refused_and_the_server_survives(
    flight_client: flight.FlightClient,
) -> None:
    # The path is a protobuf `string`: gRPC refuses to carry it before our code sees it
    # (the server's own check is in test_paths).
    descriptor = flight.FlightDescriptor.for_path(b"tables", b"\xff")
    with pytest.raises(flight.FlightError):
        flight_client.get_flight_info(descriptor)
    table = pa.table({"a": [1]})
    with pytest.raises(flight.FlightError):
        writer, _ = flight_client.do_put(descriptor, table.schema)
        with writer:
            writer.write_table(table)
    assert list(flight_client.list_flights(b"")) == []
    assert_still_serves(flight_client)


def test_unserializable_artifact_is_server_error_naming_it(
    flight_client: flight.FlightClient,
) -> None:
    result = flight_action(
        flight_client,
        "execute",
        {
            "node_id": "n",
            "flow_id": 1,
            "code": "import threading\nflowfile.publish_artifact('guard', threading.Lock())",
        },
    )
    assert result["success"], result["error"]
    with pytest.raises(flight.FlightServerError) as info:
        get(flight_client, "artifacts/1/guard")
    message = str(info.value)
    assert "artifacts/1/guard" in message
    assert "lock" in message
    assert "cannot be serialized" in message
    assert "Traceback" not in message
    assert_still_serves(flight_client)


def test_unknown_action_is_refused_naming_the_known_ones(
    flight_client: flight.FlightClient,
) -> None:
    with pytest.raises(flight.FlightServerError) as info:
        flight_action(flight_client, "format_disk")
    assert "unknown action 'format_disk'" in str(info.value)
    assert "execute" in str(info.value)
    assert_still_serves(flight_client)


def test_action_with_a_body_that_is_not_json_is_refused(flight_client: flight.FlightClient) -> None:
    with pytest.raises(flight.FlightServerError, match="not valid JSON"):
        list(flight_client.do_action(flight.Action("health", b"{nope")))
    assert_still_serves(flight_client)


def test_list_flights_with_criteria_not_utf8_is_refused(flight_client: flight.FlightClient) -> None:
    with pytest.raises(flight.FlightServerError, match="UTF-8"):
        list(flight_client.list_flights(b"\xff"))
    assert_still_serves(flight_client)


# -- auth ---------------------------------------------------------------------------------


@pytest.fixture
def secured() -> Iterator[flight.FlightClient]:
    with (
        KernelFlightServer(Kernel(Settings(flight_port=0, auth_token="s3cret"))) as server,
        flight.connect(f"grpc://127.0.0.1:{server.port}") as client,
    ):
        yield client


GOOD_TOKEN = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer s3cret")])


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(None, id="no-header"),
        pytest.param(
            flight.FlightCallOptions(headers=[(b"authorization", b"Bearer wrong")]),
            id="wrong-token",
        ),
        pytest.param(
            flight.FlightCallOptions(headers=[(b"authorization", b"s3cret")]), id="not-bearer"
        ),
    ],
)
def test_secured_server_refuses_calls_without_the_token(
    secured: flight.FlightClient, options: flight.FlightCallOptions | None
) -> None:
    with pytest.raises(flight.FlightUnauthenticatedError):
        flight_action(secured, "health", options=options)
    with pytest.raises(flight.FlightUnauthenticatedError):
        put(secured, "tables/t", pa.table({"a": [1]}), options)
    with pytest.raises(flight.FlightUnauthenticatedError):
        get(secured, "tables/t", options)
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(secured.list_flights(b"", options))
    assert list(secured.list_flights(b"", GOOD_TOKEN)) == []  # nothing got stored


def test_secured_server_accepts_the_bearer_token(secured: flight.FlightClient) -> None:
    table = pa.table({"a": [1, 2, 3]})
    put(secured, "tables/t", table, GOOD_TOKEN)
    assert get(secured, "tables/t", GOOD_TOKEN).equals(table)
    assert flight_action(secured, "health", options=GOOD_TOKEN)["status"] == "healthy"


def test_listing_never_runs_a_lazy_query_and_skips_what_has_no_schema(
    kernel_server: KernelFlightServer, flight_client: flight.FlightClient
) -> None:
    import polars as pl

    def boom(s: pl.Series) -> pl.Series:
        raise RuntimeError("ran the query")

    lazy = pl.LazyFrame({"a": [1, 2]}).select(pl.col("a").map_batches(boom, return_dtype=pl.Int64))
    broken = pl.LazyFrame({"a": [1]}).select(pl.col("missing"))
    kernel_server.kernel.artifacts.publish(1, None, "lazy", lazy)
    kernel_server.kernel.artifacts.publish(1, None, "broken", broken)

    infos = list(flight_client.list_flights(b"artifacts/1/"))

    assert [i.descriptor.path for i in infos] == [[b"artifacts", b"1", b"lazy"]]
    assert (infos[0].total_records, infos[0].total_bytes) == (-1, -1)
    assert infos[0].schema.names == ["a"]
    descriptor = flight.FlightDescriptor.for_path("artifacts", "1", "broken")
    with pytest.raises(flight.FlightServerError, match="artifacts/1/broken"):
        flight_client.get_flight_info(descriptor)
