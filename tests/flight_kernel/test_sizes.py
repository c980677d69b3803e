"""`estimate_size`: the bytes an artifact's buffers hold, found by a cheap, bounded walk."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from flight_kernel.artifacts import ArtifactStore
from flight_kernel.serialization import estimate_size
from flight_kernel.store import Store

MB = 1_000_000


class Holder:
    """A plain object holding its buffers in attributes."""

    me: Holder
    again: list[Any]
    next: Holder

    def __init__(self, **attributes: Any) -> None:
        self.__dict__.update(attributes)


class Slotted:
    __slots__ = ("unset", "weights")

    def __init__(self, weights: Any) -> None:
        self.weights = weights


@dataclass(frozen=True, slots=True)
class FrozenSlotted:
    name: str
    frame: pl.DataFrame


# -- what an object holds -------------------------------------------------------------


def test_a_polars_series_counts_its_buffers() -> None:
    series = pl.Series("x", np.zeros(10_000_000, dtype=np.float64))
    assert estimate_size(series) == series.estimated_size() == 80 * MB


def test_an_in_memory_lazyframe_counts_the_frame_it_scans() -> None:
    df = pl.DataFrame({"x": np.arange(2_000_000, dtype=np.int64), "s": ["abc"] * 2_000_000})
    assert estimate_size(df.lazy()) == df.estimated_size() > 16 * MB


def test_an_object_holding_an_array_counts_the_array() -> None:
    weights = np.zeros(1_000_000, dtype=np.float64)
    assert estimate_size(Holder(weights=weights, name="m")) >= weights.nbytes == 8 * MB


def test_slots_are_walked_and_an_unset_slot_is_skipped() -> None:
    weights = np.ones(500_000, dtype=np.float64)
    assert estimate_size(Slotted(weights)) >= 4 * MB


def test_a_frozen_slotted_dataclass_counts_its_frame() -> None:
    frame = pl.DataFrame({"x": np.arange(1_000_000, dtype=np.int64)})
    assert estimate_size(FrozenSlotted("f", frame)) >= frame.estimated_size() == 8 * MB


def test_buffers_reached_through_containers_and_attributes_add_up() -> None:
    model = Holder(
        layers=[Holder(w=np.zeros(250_000)), Holder(w=np.zeros(250_000))],  # 2 MB each
        lookup={"table": pa.table({"x": np.arange(500_000, dtype=np.int32)})},  # 2 MB
        series=(pl.Series(np.zeros(125_000)),),  # 1 MB
    )
    assert 7 * MB <= estimate_size(model) < 8 * MB


def test_an_object_held_twice_or_in_a_cycle_counts_once() -> None:
    weights = np.zeros(1_000_000, dtype=np.float64)
    node = Holder(weights=weights)
    node.me = node
    node.again = [weights, weights, {"w": weights}]
    assert 8 * MB <= estimate_size(node) < 9 * MB


def test_numpy_views_count_their_base_once() -> None:
    base = np.zeros(1_000_000, dtype=np.float64)
    views = {"base": base, "head": base[:10], "tail": base[-10:], "t": base.reshape(1000, 1000).T}
    assert 8 * MB <= estimate_size(views) < 9 * MB


def test_a_view_alone_counts_the_buffer_it_keeps_alive() -> None:
    head = np.zeros(1_000_000, dtype=np.float64)[:10]
    assert estimate_size(head) == 8 * MB


def test_pandas_objects_count_their_values_deeply() -> None:
    series = pd.Series(["some text value"] * 100_000)
    frame = pd.DataFrame({"s": series, "x": np.arange(100_000)})
    assert estimate_size(series) == series.memory_usage(deep=True)
    assert estimate_size(frame) == frame.memory_usage(deep=True).sum()
    assert estimate_size(Holder(frame=frame)) >= frame.memory_usage(deep=True).sum()


def test_arrow_arrays_count_their_buffers() -> None:
    array = pa.array(np.arange(1_000_000, dtype=np.int64))
    chunked = pa.chunked_array([array, array])
    assert estimate_size(array) == 8 * MB
    assert estimate_size(chunked) == 16 * MB


def test_a_published_artifact_records_the_size_of_what_it_holds(tmp_path: Any) -> None:
    model = Holder(coef=np.zeros(1_000_000), intercept=0.5, series=pl.Series(np.zeros(250_000)))
    record = ArtifactStore(Store(str(tmp_path))).publish(1, "n", "model", model).record()
    assert record.size_bytes >= 10 * MB


# -- cheap and safe -------------------------------------------------------------------


MAGIC_CALLS: list[str] = []


class Magic:
    """Attribute magic that an estimate must not run."""

    def __init__(self) -> None:
        object.__setattr__(self, "weights", np.zeros(1_000_000, dtype=np.float64))

    def __getattr__(self, name: str) -> Any:
        MAGIC_CALLS.append(f"__getattr__({name})")
        raise AttributeError(name)

    def __getattribute__(self, name: str) -> Any:
        MAGIC_CALLS.append(f"__getattribute__({name})")
        return object.__getattribute__(self, name)

    @property
    def nbytes(self) -> int:
        MAGIC_CALLS.append("nbytes")
        return 1


def test_no_user_attribute_magic_runs_and_the_attributes_still_count() -> None:
    obj = Magic()
    MAGIC_CALLS.clear()
    size = estimate_size(obj)
    assert MAGIC_CALLS == []
    assert size >= 8 * MB


class Hostile:
    def __sizeof__(self) -> int:
        raise RuntimeError("no size for you")

    def __len__(self) -> int:
        raise RuntimeError("no length either")

    def __iter__(self) -> Any:
        raise RuntimeError("not iterable")


class HostileList(list[Any]):
    def __iter__(self) -> Any:
        raise RuntimeError("not iterable")

    def __len__(self) -> int:
        raise RuntimeError("no length")


class HostileDict(dict[str, Any]):
    def items(self) -> Any:
        raise RuntimeError("no items")

    def __iter__(self) -> Any:
        raise RuntimeError("not iterable")


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(Hostile(), id="raising-sizeof"),
        pytest.param(Holder(inner=Hostile()), id="raising-sizeof-inside"),
        pytest.param(HostileList([np.zeros(10)]), id="list-subclass-refusing-iteration"),
        pytest.param(HostileDict(a=np.zeros(10)), id="dict-subclass-refusing-items"),
    ],
)
def test_an_estimate_never_fails(obj: Any) -> None:
    assert estimate_size(obj) >= 0


def test_containers_subclassed_by_user_code_are_read_without_their_overrides() -> None:
    assert estimate_size(HostileList([np.zeros(1_000_000)])) >= 8 * MB
    assert estimate_size(HostileDict(w=np.zeros(1_000_000))) >= 8 * MB


def test_a_deep_chain_stops_at_the_depth_bound() -> None:
    head = tail = Holder(weights=np.zeros(1000, dtype=np.uint8))
    for _ in range(5000):  # deeper than the recursion limit
        tail.next = Holder(weights=np.zeros(1000, dtype=np.uint8))
        tail = tail.next
    size = estimate_size(head)
    assert 1000 <= size < 100 * 1000  # the head of the chain, not all 5 MB of it


def test_a_huge_container_is_only_sampled() -> None:
    arrays = [np.zeros(10, dtype=np.uint8) for _ in range(200_000)]
    assert sys.getsizeof(arrays) <= estimate_size(arrays) < sys.getsizeof(arrays) + 200_000 * 10


def test_a_lazyframe_with_a_query_is_not_evaluated_or_analysed() -> None:
    calls: list[int] = []

    def udf(s: pl.Series) -> pl.Series:
        calls.append(1)  # polars calls it while planning, to learn its dtype
        return s

    lf = pl.DataFrame({"x": [1, 2, 3]}).lazy().select(pl.col("x").map_batches(udf))
    assert estimate_size(lf) == sys.getsizeof(lf)  # its inputs cannot be seen without planning
    assert calls == []


def test_a_lazyframe_over_a_missing_file_is_estimated_without_touching_it(tmp_path: Any) -> None:
    path = tmp_path / "gone.csv"
    pl.DataFrame({"x": [1]}).write_csv(path)
    lf = pl.scan_csv(path)
    os.remove(path)  # planning would now fail: the estimate must not plan
    assert estimate_size(lf) == sys.getsizeof(lf)
    assert estimate_size(Holder(lf=lf, w=np.zeros(1_000_000))) >= 8 * MB
