"""`input_paths` entries to LazyFrames: parquet, Arrow IPC, `flight:///` and `flight://`."""

from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING

import polars as pl
import pyarrow as pa
import pyarrow.flight as flight

from flight_kernel.auth import call_options
from flight_kernel.paths import (
    ArtifactPath,
    FlightURI,
    is_flight_uri,
    parse_flight_uri,
    resolve,
)
from flight_kernel.serialization import (
    PICKLE,
    SERIALIZER_KEY,
    TYPE_KEY,
    as_arrow_table,
    is_table_like,
)
from flight_kernel.tables import for_polars

if TYPE_CHECKING:
    from flight_kernel.artifacts import ArtifactStore
    from flight_kernel.store import Store

IPC_SUFFIXES = (".arrow", ".ipc", ".feather")


def lazy_from_arrow(table: pa.Table) -> pl.LazyFrame:
    """A LazyFrame over the table's own buffers (numeric columns are not copied)."""
    frame = pl.from_arrow(table, rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    return frame.lazy()


class InputReader:
    """Resolves input entries against this kernel's store or other Flight servers."""

    def __init__(
        self, store: Store, artifacts: ArtifactStore, auth_token: str | None = None
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._auth_token = auth_token

    def read(self, entry: str) -> pl.LazyFrame:
        if is_flight_uri(entry):
            return self._read_flight(parse_flight_uri(entry))
        return self._read_file(entry)

    def _read_file(self, entry: str) -> pl.LazyFrame:
        # against the start directory, not one user code may have changed to (SPEC §5)
        path = resolve(entry)
        if not (os.path.exists(path) or (glob.has_magic(path) and glob.glob(path))):
            shown = repr(entry) if path == entry else f"{entry!r} (resolved to {path!r})"
            raise FileNotFoundError(f"input file not found: {shown}")
        if path.lower().endswith(IPC_SUFFIXES):
            return pl.scan_ipc(path)
        return pl.scan_parquet(path)

    def _read_flight(self, uri: FlightURI) -> pl.LazyFrame:
        if uri.is_local:
            path = uri.path
            if isinstance(path, ArtifactPath):
                obj = self._artifacts.get(path.flow_id, path.name).obj
                if not is_table_like(obj):
                    raise TypeError(f"artifact {path} is a {type(obj).__name__}, not a table")
                return lazy_from_arrow(as_arrow_table(obj))
            return lazy_from_arrow(for_polars(self._store.get(path)))
        table = self.fetch_remote(uri)
        meta = table.schema.metadata or {}
        if meta.get(SERIALIZER_KEY) == PICKLE:  # the same answer as a local read gives
            kind = meta.get(TYPE_KEY, b"object").decode(errors="replace").rsplit(".", 1)[-1]
            raise TypeError(f"artifact {uri} is a {kind}, not a table")
        return lazy_from_arrow(table)

    def fetch_remote(self, uri: FlightURI) -> pa.Table:
        """`do_get` from another Flight server (sending our token, if any)."""
        options = call_options(self._auth_token)
        with flight.connect(f"grpc://{uri.host}:{uri.port}") as client:
            try:
                return client.do_get(flight.Ticket(str(uri.path).encode()), options).read_all()
            except KeyError:
                raise KeyError(f"nothing stored at {uri}") from None
            except flight.FlightUnavailableError as exc:
                raise ConnectionError(f"Flight server of {uri} is unreachable: {exc}") from None
