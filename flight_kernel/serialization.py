"""Artifacts to Arrow and back (tables travel as tables, other objects as pickled bytes), and
what an artifact's buffers weigh (`estimate_size`)."""

from __future__ import annotations

import contextlib
import enum
import functools
import itertools
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle
import polars as pl
import pyarrow as pa

from flight_kernel.errors import InvalidRequest, SerializationFailed

SERIALIZER_KEY = b"kernel.serializer"
TYPE_KEY = b"kernel.python_type"
PICKLE = b"cloudpickle"
ARROW = b"arrow"
PICKLE_COLUMN = "object"
PICKLE_SCHEMA = pa.schema([pa.field(PICKLE_COLUMN, pa.large_binary())])


def type_name(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _pandas_frame_type() -> Any:
    pd = sys.modules.get("pandas")  # only when user code already imported it
    return pd.DataFrame if pd is not None else None


def is_table_like(obj: Any) -> bool:
    pd_frame = _pandas_frame_type()
    return isinstance(obj, pl.DataFrame | pl.LazyFrame | pa.Table | pa.RecordBatch) or (
        pd_frame is not None and isinstance(obj, pd_frame)
    )


def as_arrow_table(obj: Any, *, views: bool = False) -> pa.Table:
    """A table-like object as an Arrow table; with `views`, polars strings stay views (no copy)."""
    if isinstance(obj, pa.Table):
        return obj
    if isinstance(obj, pa.RecordBatch):
        return pa.Table.from_batches([obj])
    if isinstance(obj, pl.LazyFrame):
        obj = obj.collect()
    if isinstance(obj, pl.DataFrame):
        return obj.to_arrow(compat_level=pl.CompatLevel.newest() if views else None)
    pd_frame = _pandas_frame_type()
    if pd_frame is not None and isinstance(obj, pd_frame):
        return pa.Table.from_pandas(obj)
    raise TypeError(f"{type_name(obj)} is not a table")


def _tagged(schema: pa.Schema, obj: Any) -> pa.Schema:
    meta = dict(schema.metadata or {})
    meta.update({SERIALIZER_KEY: ARROW, TYPE_KEY: type_name(obj).encode()})
    return schema.with_metadata(meta)


def describe_table(obj: Any) -> tuple[pa.Schema, int, int]:
    """Schema, rows and bytes of a table-like artifact as `to_arrow` would send it, without
    evaluating anything: a LazyFrame gives `collect_schema()` and -1 rows and bytes."""
    if isinstance(obj, pa.Table | pa.RecordBatch):
        return _tagged(obj.schema, obj), obj.num_rows, obj.nbytes
    if isinstance(obj, pl.LazyFrame):
        empty = pl.DataFrame(schema=obj.collect_schema())
        return _tagged(empty.to_arrow().schema, obj), -1, -1
    if isinstance(obj, pl.DataFrame):
        return _tagged(obj.head(0).to_arrow().schema, obj), obj.height, int(obj.estimated_size())
    pd_frame = _pandas_frame_type()
    if pd_frame is not None and isinstance(obj, pd_frame):
        schema = pa.Schema.from_pandas(obj)  # infers types; converts nothing
        return _tagged(schema, obj), len(obj), int(obj.memory_usage(deep=True).sum())
    raise TypeError(f"{type_name(obj)} is not a table")


def pickle_schema(obj: Any) -> pa.Schema:
    return PICKLE_SCHEMA.with_metadata({SERIALIZER_KEY: PICKLE, TYPE_KEY: type_name(obj)})


def to_arrow(obj: Any, label: str) -> pa.Table:
    """Serialize an artifact for Flight; `label` names it in errors."""
    if is_table_like(obj):
        table = as_arrow_table(obj)
        meta = dict(table.schema.metadata or {})
        meta.update({SERIALIZER_KEY: ARROW, TYPE_KEY: type_name(obj)})
        return table.replace_schema_metadata(meta)
    try:
        data = cloudpickle.dumps(obj, protocol=5)
    except Exception as exc:
        raise SerializationFailed(
            f"artifact {label} of type {type_name(obj)} cannot be serialized: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    return pa.table({PICKLE_COLUMN: pa.array([data], pa.large_binary())}, schema=pickle_schema(obj))


def from_arrow(table: pa.Table) -> Any:
    """Restore what `to_arrow` produced; a table without our metadata stays a pyarrow Table."""
    meta = table.schema.metadata or {}
    serializer = meta.get(SERIALIZER_KEY)
    kind = meta.get(TYPE_KEY, b"").decode()
    if serializer == PICKLE:
        if table.num_rows != 1 or table.schema.names != [PICKLE_COLUMN]:
            raise InvalidRequest(
                "a cloudpickle artifact stream must be one row of one "
                f"binary column {PICKLE_COLUMN!r}"
            )
        try:
            return cloudpickle.loads(table.column(0)[0].as_py())
        except Exception as exc:
            raise InvalidRequest(
                f"cannot restore artifact of type {kind}: {type(exc).__name__}: {exc}"
            ) from None
    clean = {k: v for k, v in meta.items() if k not in (SERIALIZER_KEY, TYPE_KEY)}
    table = table.replace_schema_metadata(clean or None)
    if kind in ("polars.dataframe.frame.DataFrame", "polars.lazyframe.frame.LazyFrame"):
        df = pl.from_arrow(table)
        assert isinstance(df, pl.DataFrame)
        return df.lazy() if kind.endswith("LazyFrame") else df
    if kind in ("pandas.core.frame.DataFrame", "pandas.DataFrame"):  # pandas >= 3 says the latter
        return table.to_pandas()
    if kind == "pyarrow.lib.RecordBatch":
        return table.combine_chunks().to_batches()[0] if table.num_rows else table
    return table


# An estimate runs on every publish, so its walk is bounded whatever the object's shape.
SIZE_MAX_DEPTH = 10  # levels followed; an attribute is two (the `__dict__`, then its value)
SIZE_MAX_ITEMS = 1_000  # objects looked at in one estimate (about a millisecond)
_SCALARS = frozenset({int, float, bool, str, bytes, type(None)})
_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement (or C's FromSpec)


def estimate_size(obj: Any) -> int:
    """Bytes held by an object's buffers (frames, series, arrays), also those reachable through
    its attributes (`__dict__`, `__slots__`) and containers. The walk is bounded (depth, items),
    counts what it meets twice once, runs no code of the object's classes (no `__getattr__`,
    property or overridden container method), evaluates no query and never fails."""
    return _SizeWalk().size(obj, 0)


class _SizeWalk:
    """One estimate: what it has seen, and how many objects it may still look at."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.left = SIZE_MAX_ITEMS

    def size(self, obj: Any, depth: int) -> int:
        if self.left <= 0 or id(obj) in self.seen:
            return 0
        self.left -= 1
        self.seen.add(id(obj))
        cls: type = type(obj)
        if cls in _SCALARS:  # the most common items, quickest out
            return sys.getsizeof(obj)
        try:
            kind = _kind(cls)
            if kind is _Kind.ARRAY:
                return self._array_size(obj)
            held = _BUFFERS.get(kind)
            if held is not None:
                return held(obj)
            size = _shallow(obj)
            if depth < SIZE_MAX_DEPTH and kind is not _Kind.PLAIN:
                for child in self._children(obj, kind):
                    if self.left <= 0:
                        break
                    size += self.size(child, depth + 1)
            return size
        except Exception:  # an estimate must never fail a publish
            return 0

    def _array_size(self, array: Any) -> int:
        """A numpy array counts the buffer it keeps alive: a view counts its base, once."""
        ndarray = sys.modules["numpy"].ndarray  # imported: here is one of its arrays
        base_of = ndarray.base.__get__
        root = array
        while issubclass(type(base := base_of(root)), ndarray):
            root = base
        if root is not array:
            if id(root) in self.seen:
                return 0
            self.seen.add(id(root))
        return int(ndarray.nbytes.__get__(root))

    def _children(self, obj: Any, kind: _Kind) -> Iterable[Any]:
        """What a container holds, or an object's attributes, read with the built-in types'
        own methods so that no override runs; at most what the item budget allows."""
        n = self.left
        if kind is _Kind.DICT:
            return itertools.chain.from_iterable(itertools.islice(dict.items(obj), n))
        if kind is _Kind.LIST:
            return list.__getitem__(obj, slice(0, n))
        if kind is _Kind.TUPLE:
            return tuple.__getitem__(obj, slice(0, n))
        if kind is _Kind.SET:
            return itertools.islice(set.__iter__(obj), n)
        if kind is _Kind.FROZENSET:
            return itertools.islice(frozenset.__iter__(obj), n)
        return _attributes(obj)


class _Kind(enum.Enum):
    """How the size walk treats the objects of a class."""

    PLAIN = enum.auto()  # built-in objects: their own size only
    OBJECT = enum.auto()  # instances of Python classes: their attributes are walked
    DICT = enum.auto()
    LIST = enum.auto()
    TUPLE = enum.auto()
    SET = enum.auto()
    FROZENSET = enum.auto()
    ARRAY = enum.auto()  # numpy
    POLARS_FRAME = enum.auto()
    POLARS_SERIES = enum.auto()
    LAZY_FRAME = enum.auto()
    ARROW = enum.auto()
    ARROW_BUFFER = enum.auto()
    PANDAS_FRAME = enum.auto()
    PANDAS_SERIES = enum.auto()  # and Index
    MEMORYVIEW = enum.auto()


@functools.lru_cache(maxsize=1024)
def _kind(cls: type) -> _Kind:
    """The kind of a class, found on the class: `isinstance` would ask an object for its
    `__class__`. numpy and pandas are looked at only if already imported (then their classes
    exist); a class made before they were imported is none of theirs."""
    np, pd = sys.modules.get("numpy"), sys.modules.get("pandas")
    kinds: list[tuple[Any, _Kind]] = [
        (pl.DataFrame, _Kind.POLARS_FRAME),
        (pl.Series, _Kind.POLARS_SERIES),
        (pl.LazyFrame, _Kind.LAZY_FRAME),
        ((pa.Table, pa.RecordBatch, pa.Array, pa.ChunkedArray), _Kind.ARROW),
        (pa.Buffer, _Kind.ARROW_BUFFER),
        (memoryview, _Kind.MEMORYVIEW),
        (dict, _Kind.DICT),
        (list, _Kind.LIST),
        (tuple, _Kind.TUPLE),
        (set, _Kind.SET),
        (frozenset, _Kind.FROZENSET),
    ]
    if np is not None:
        kinds.append((np.ndarray, _Kind.ARRAY))
    if pd is not None:
        kinds += [(pd.DataFrame, _Kind.PANDAS_FRAME), ((pd.Series, pd.Index), _Kind.PANDAS_SERIES)]
    for classes, kind in kinds:
        if issubclass(cls, classes):
            return kind
    # Attributes of built-in objects (and of code and namespaces) are not data they hold.
    not_data = (type, types.ModuleType, types.FunctionType, types.MethodType, str, bytes, int)
    if not cls.__flags__ & _HEAP_TYPE or issubclass(cls, not_data):
        return _Kind.PLAIN
    return _Kind.OBJECT


def _pandas_memory(obj: Any) -> int:
    """`memory_usage(deep=True)`, pandas' own (not a subclass's override)."""
    pd = sys.modules["pandas"]  # imported: here is one of its objects
    if issubclass(type(obj), pd.DataFrame):
        return int(pd.DataFrame.memory_usage(obj, deep=True).sum())
    base = pd.Series if issubclass(type(obj), pd.Series) else pd.Index
    return int(base.memory_usage(obj, deep=True))


_BUFFERS: dict[_Kind, Callable[[Any], int]] = {
    _Kind.POLARS_FRAME: lambda df: int(pl.DataFrame.estimated_size(df)),
    _Kind.POLARS_SERIES: lambda s: int(pl.Series.estimated_size(s)),
    _Kind.LAZY_FRAME: lambda lf: _lazy_frame_size(lf),
    _Kind.ARROW: lambda a: int(a.nbytes),
    _Kind.ARROW_BUFFER: lambda b: int(b.size),
    _Kind.PANDAS_FRAME: _pandas_memory,
    _Kind.PANDAS_SERIES: _pandas_memory,
    _Kind.MEMORYVIEW: lambda m: int(memoryview.nbytes.__get__(m)),
}


def _attributes(obj: Any) -> list[Any]:
    """The values in an object's `__slots__` and `__dict__`, read through the descriptors
    Python made for them (never `__getattribute__`, `__getattr__` or properties)."""
    cls: type = type(obj)
    slots, dict_descriptor = _attribute_descriptors(cls)
    values: list[Any] = []
    for slot in slots:
        with contextlib.suppress(AttributeError):  # an unset slot
            values.append(slot.__get__(obj, cls))
    if dict_descriptor is not None:
        instance_dict = dict_descriptor.__get__(obj, cls)
        if type(instance_dict) is dict:
            values.append(instance_dict)  # walked as a dict: its own size, keys and values
    return values


@functools.lru_cache(maxsize=1024)
def _attribute_descriptors(cls: type) -> tuple[tuple[Any, ...], Any]:
    """A class's slot descriptors and the descriptor of its instances' `__dict__` (or None)."""
    slots: list[Any] = []
    dict_descriptor: Any = None
    for klass in cls.__mro__:
        namespace = vars(klass)
        slots += [d for d in namespace.values() if type(d) is types.MemberDescriptorType]
        found = namespace.get("__dict__")
        if dict_descriptor is None and type(found) is types.GetSetDescriptorType:
            dict_descriptor = found
    return tuple(slots), dict_descriptor


def _shallow(obj: Any) -> int:
    """`sys.getsizeof`, unless a class defines `__sizeof__` in Python (code of the object's)."""
    cls: type = type(obj)
    return int(object.__sizeof__(obj)) if _sizeof_in_python(cls) else sys.getsizeof(obj)


@functools.lru_cache(maxsize=1024)
def _sizeof_in_python(cls: type) -> bool:
    built_in = (types.MethodDescriptorType, types.WrapperDescriptorType)
    for klass in cls.__mro__:
        sizeof = vars(klass).get("__sizeof__")
        if sizeof is not None:
            return type(sizeof) not in built_in
    return False


def _lazy_frame_size(lf: pl.LazyFrame) -> int:
    """The frame that `df.lazy()` scans, or a shallow size for any other query.

    A query's inputs can only be seen by planning it (`_ldf.visit()` converts the plan first),
    and planning may read files (schemas of scans) or call user functions (dtypes of
    `map_batches`): too slow and not ours to run on a publish. A plan whose root is a scan of
    a DataFrame (polars' private `_node_name`, read without planning) has nothing to plan, so
    its frame is read from the plan's node, sharing its buffers. Any failure (polars moves
    these private APIs) gives the shallow size.
    """
    with contextlib.suppress(Exception):
        ldf: Any = lf._ldf
        if ldf._node_name() == "DataFrameScan":
            node = ldf.visit().view_current_node()
            if type(node).__name__ == "DataFrameScan":
                return int(pl.DataFrame._from_pydf(node.df).estimated_size())
    return _shallow(lf)
