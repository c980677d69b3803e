"""Artifacts to Arrow and back: tables as tables, other objects as one pickled row."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from polars.testing import assert_frame_equal

from flight_kernel.errors import InvalidRequest, SerializationFailed
from flight_kernel.serialization import (
    ARROW,
    PICKLE,
    PICKLE_COLUMN,
    SERIALIZER_KEY,
    TYPE_KEY,
    estimate_size,
    from_arrow,
    to_arrow,
)
from flight_kernel.server import KernelFlightServer


def _frame() -> pl.DataFrame:
    return pl.DataFrame({"id": [1, 2, 3], "name": ["a", None, "c"], "x": [0.5, 1.5, None]})


# -- tables travel as tables ------------------------------------------------------------


def test_polars_dataframe_travels_as_a_table_and_comes_back_a_dataframe() -> None:
    df = _frame()
    table = to_arrow(df, "artifacts/1/df")
    assert table.num_rows == 3
    assert table.schema.names == ["id", "name", "x"]
    assert table.schema.metadata[SERIALIZER_KEY] == ARROW
    assert table.schema.metadata[TYPE_KEY] == b"polars.dataframe.frame.DataFrame"
    back = from_arrow(table)
    assert isinstance(back, pl.DataFrame)
    assert_frame_equal(back, df)


def test_polars_lazyframe_comes_back_a_lazyframe() -> None:
    lf = _frame().lazy().filter(pl.col("id") > 1)
    table = to_arrow(lf, "artifacts/1/lf")
    assert table.num_rows == 2
    back = from_arrow(table)
    assert isinstance(back, pl.LazyFrame)
    assert_frame_equal(back.collect(), lf.collect())


def test_pyarrow_table_comes_back_equal_with_its_own_metadata() -> None:
    table = pa.table({"a": [1, 2], "b": ["x", "y"]}).replace_schema_metadata({"owner": "me"})
    back = from_arrow(to_arrow(table, "t"))
    assert isinstance(back, pa.Table)
    assert back.equals(table)
    assert back.schema.metadata == {b"owner": b"me"}


def test_pyarrow_record_batch_comes_back_a_record_batch() -> None:
    batch = pa.record_batch({"a": [1, 2, 3], "b": [True, False, None]})
    table = to_arrow(batch, "b")
    assert table.schema.metadata[TYPE_KEY] == b"pyarrow.lib.RecordBatch"
    back = from_arrow(table)
    assert isinstance(back, pa.RecordBatch)
    assert back.equals(batch)


def test_pandas_dataframe_comes_back_a_pandas_dataframe() -> None:
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"], "c": [0.5, None, 2.0]})
    table = to_arrow(frame, "p")
    assert table.schema.metadata[SERIALIZER_KEY] == ARROW
    assert table.schema.metadata[TYPE_KEY] in (b"pandas.core.frame.DataFrame", b"pandas.DataFrame")
    assert table.column("a").to_pylist() == [1, 2, 3]
    back = from_arrow(table)
    assert isinstance(back, pd.DataFrame)
    pd.testing.assert_frame_equal(back, frame)


def test_table_without_our_metadata_stays_a_pyarrow_table() -> None:
    table = pa.table({"a": [1]})
    back = from_arrow(table)
    assert isinstance(back, pa.Table)
    assert back.equals(table)


# -- other objects travel as one pickled row ------------------------------------------------


def _assert_pickled_form(table: pa.Table, type_name: bytes) -> None:
    assert table.num_rows == 1
    assert table.schema.names == [PICKLE_COLUMN]
    assert pa.types.is_large_binary(table.schema.field(PICKLE_COLUMN).type)
    assert table.schema.metadata[SERIALIZER_KEY] == PICKLE
    assert table.schema.metadata[TYPE_KEY] == type_name


def test_dict_travels_pickled_and_is_restored() -> None:
    obj = {"threshold": 0.5, "labels": ["a", "b"], "nested": {"k": (1, 2)}}
    table = to_arrow(obj, "artifacts/1/cfg")
    _assert_pickled_form(table, b"builtins.dict")
    assert from_arrow(table) == obj


def test_numpy_array_travels_pickled_and_is_restored() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    table = to_arrow(arr, "artifacts/1/arr")
    _assert_pickled_form(table, b"numpy.ndarray")
    back = from_arrow(table)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, arr)


def test_lambda_travels_pickled_and_still_works() -> None:
    offset = 10
    table = to_arrow(lambda x: x + offset, "artifacts/1/fn")
    _assert_pickled_form(table, b"builtins.function")
    assert from_arrow(table)(5) == 15


@pytest.fixture
def user_object(
    kernel_server: KernelFlightServer, flight_client: flight.FlightClient
) -> Iterator[Any]:
    """An instance of a class that exists only in code the kernel executed."""
    code = (
        "class Model:\n"
        "    def __init__(self, w):\n"
        "        self.w = w\n"
        "    def predict(self, x):\n"
        "        return [self.w * v for v in x]\n"
        "flowfile.publish_artifact('model', Model(3))\n"
    )
    body = json.dumps({"node_id": "train", "code": code, "flow_id": 1}).encode()
    result = json.loads(
        next(iter(flight_client.do_action(flight.Action("execute", body)))).body.to_pybytes()
    )
    assert result["success"], result["error"]
    yield kernel_server.kernel.artifacts.get(1, "model").obj


def test_instance_of_a_user_defined_class_travels_pickled(user_object: Any) -> None:
    table = to_arrow(user_object, "artifacts/1/model")
    _assert_pickled_form(table, b"__main__.Model")
    back = from_arrow(table)
    assert type(back).__name__ == "Model"
    assert back.w == 3
    assert back.predict([1, 2]) == [3, 6]


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(threading.Lock(), id="lock"),
        pytest.param((i for i in range(3)), id="generator"),
    ],
)
def test_unserializable_object_raises_serialization_failed_naming_it(obj: Any) -> None:
    with pytest.raises(SerializationFailed) as info:
        to_arrow(obj, "artifacts/4/handle")
    message = info.value.message
    assert "artifacts/4/handle" in message
    assert type(obj).__name__ in message


@pytest.mark.parametrize(
    "table",
    [
        pytest.param(
            pa.table({PICKLE_COLUMN: pa.array([b"not a pickle"], pa.large_binary())}),
            id="garbage-bytes",
        ),
        pytest.param(
            pa.table({PICKLE_COLUMN: pa.array([b"a", b"b"], pa.large_binary())}), id="two-rows"
        ),
        pytest.param(pa.table({"other": pa.array([b"a"], pa.large_binary())}), id="wrong-column"),
    ],
)
def test_malformed_pickle_stream_is_invalid_request(table: pa.Table) -> None:
    table = table.replace_schema_metadata({SERIALIZER_KEY: PICKLE, TYPE_KEY: b"builtins.dict"})
    with pytest.raises(InvalidRequest):
        from_arrow(table)


# -- sizes are the buffers, not shallow sizes ----------------------------------------------


def test_estimate_size_of_numpy_array_is_its_buffer() -> None:
    arr = np.zeros(1_000_000, dtype=np.float64)
    assert estimate_size(arr) == arr.nbytes == 8_000_000
    assert sys.getsizeof(arr.view()) < 1000  # what a shallow size would have said


def test_estimate_size_of_polars_frame_is_its_estimated_size() -> None:
    df = pl.DataFrame({"x": np.arange(1_000_000, dtype=np.int64)})
    assert estimate_size(df) == df.estimated_size() >= 8_000_000


def test_estimate_size_of_arrow_table_is_its_nbytes() -> None:
    table = pa.table({"x": np.arange(500_000, dtype=np.int32)})
    assert estimate_size(table) == table.nbytes >= 2_000_000


def test_estimate_size_of_pandas_frame_counts_its_values() -> None:
    frame = pd.DataFrame({"x": np.arange(1_000_000, dtype=np.int64)})
    assert estimate_size(frame) >= 8_000_000


def test_estimate_size_of_a_dict_counts_the_arrays_inside() -> None:
    obj = {"weights": np.zeros(250_000, dtype=np.float64), "name": "m"}
    assert estimate_size(obj) >= 2_000_000
