"""`publish_output` (SPEC §5), through executions: atomic files, one name once, paths, names."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from flight_kernel.kernel import Kernel
from flight_kernel.paths import START_DIR, OutputPath
from flight_kernel.requests import ExecuteRequest
from flight_kernel.results import ExecutionResult


@pytest.fixture
def kernel() -> Kernel:
    return Kernel()


def execute(kernel: Kernel, code: str, **fields) -> ExecutionResult:
    return kernel.execute(ExecuteRequest(node_id=fields.pop("node_id", "n"), code=code, **fields))


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _old_file(out: Path) -> Path:
    out.mkdir()
    kept = out / "kept.parquet"
    pl.DataFrame({"old": [7, 8]}).write_parquet(kept)
    return kept


# -- a publish that fails leaves no file and the older one untouched ---------------------

FAILING_QUERIES = [
    pytest.param(
        "pl.LazyFrame({'a': [1]}).select("
        "pl.col('a').map_batches(lambda s: 1 / 0, return_dtype=pl.Int64))",
        ZeroDivisionError,
        id="map_batches-raises",
    ),
    pytest.param(  # runs in the streaming sink, after the file was opened
        "pl.LazyFrame({'a': [1]}).select(pl.col('a').map_batches("
        "lambda s: 1 / 0, return_dtype=pl.Int64, is_elementwise=True))",
        ZeroDivisionError,
        id="elementwise-map_batches-raises",
    ),
    pytest.param(
        "pl.LazyFrame({'a': [300]}).select(pl.col('a').cast(pl.UInt8, strict=True))",
        pl.exceptions.InvalidOperationError,
        id="strict-cast-fails",
    ),
]


@pytest.mark.parametrize(("query", "raises"), FAILING_QUERIES)
def test_a_lazy_output_whose_query_fails_leaves_no_file_and_the_old_one_untouched(
    kernel, tmp_path, query, raises
):
    with pytest.raises(raises):
        eval(query, {"pl": pl}).collect()  # the query itself fails, wherever it runs
    out = tmp_path / "out"
    kept = _old_file(out)
    code = (
        "import polars as pl\n"
        f"bad = {query}\n"
        "for name in ('kept', 'fresh'):\n"
        "    try:\n"
        "        flowfile.publish_output(bad, name=name)\n"
        "    except Exception as exc:\n"
        "        print(name, type(exc).__name__)\n"
    )
    result = execute(kernel, code, output_dir=str(out))

    assert result.success is True, result.error
    assert result.stdout == f"kept {raises.__name__}\nfresh {raises.__name__}\n"
    assert result.output_paths == []
    assert _files(out) == ["kept.parquet"]
    assert pl.read_parquet(kept)["old"].to_list() == [7, 8]


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes beyond `limit` bytes fail with EFBIG, as on a full disk (Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param("big", id="DataFrame"),
        pytest.param("big.lazy()", id="LazyFrame"),
        pytest.param("big.to_arrow()", id="pyarrow-Table"),
    ],
)
def test_a_write_that_breaks_off_leaves_no_file_and_the_old_one_untouched(kernel, tmp_path, make):
    out = tmp_path / "out"
    kept = _old_file(out)
    code = (
        "import polars as pl\n"
        "big = pl.DataFrame({'x': range(1_000_000)})\n"
        f"frame = {make}\n"
        "for name in ('kept', 'fresh'):\n"
        "    try:\n"
        "        flowfile.publish_output(frame, name=name)\n"
        "    except Exception as exc:\n"
        "        print(name, 'File too large' in str(exc))\n"
    )
    with file_size_limit(64 * 1024):
        result = execute(kernel, code, output_dir=str(out))

    assert result.success is True, result.error
    assert result.stdout == "kept True\nfresh True\n"
    assert result.output_paths == []
    assert _files(out) == ["kept.parquet"]
    assert pl.read_parquet(kept)["old"].to_list() == [7, 8]


def test_a_publish_that_succeeds_replaces_the_old_file_and_leaves_nothing_else(kernel, tmp_path):
    out = tmp_path / "out"
    kept = _old_file(out)
    code = "import polars as pl\nflowfile.publish_output(pl.DataFrame({'new': [1]}), name='kept')\n"
    result = execute(kernel, code, output_dir=str(out))

    assert result.success is True, result.error
    assert result.output_paths == [str(kept)]
    assert _files(out) == ["kept.parquet"]
    assert pl.read_parquet(kept).to_dict(as_series=False) == {"new": [1]}


# -- an output name is used once per execution ---------------------------------------------

TWICE = [
    pytest.param("'twice'", "'twice'", "twice", id="explicit-twice"),
    pytest.param("'output_0'", "None", "output_0", id="explicit-then-numbered"),
    pytest.param("None", "'output_0'", "output_0", id="numbered-then-explicit"),
]


def _published(kernel: Kernel, where: str) -> dict:
    if where.startswith("flight:///"):
        path = OutputPath(0, "n", where.rsplit("/", 1)[1])
        return kernel.table(path).to_pydict()
    return pl.read_parquet(where).to_dict(as_series=False)


@pytest.mark.parametrize(("first", "second", "name"), TWICE)
@pytest.mark.parametrize(
    "to_files", [pytest.param(True, id="files"), pytest.param(False, id="flight")]
)
def test_an_output_name_this_execution_already_used_is_refused(
    kernel, tmp_path, first, second, name, to_files
):
    out = tmp_path / "out"
    code = (
        "import polars as pl\n"
        f"flowfile.publish_output(pl.DataFrame({{'x': [1]}}), name={first})\n"
        "try:\n"
        f"    flowfile.publish_output(pl.DataFrame({{'x': [2]}}), name={second})\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    result = execute(kernel, code, output_dir=str(out) if to_files else "")

    assert result.success is True, result.error
    assert f"'{name}'" in result.stdout
    assert "already" in result.stdout
    expected = str(out / f"{name}.parquet") if to_files else f"flight:///outputs/0/n/{name}"
    assert result.output_paths == [expected]
    assert _published(kernel, expected) == {"x": [1]}


def test_refusing_a_used_name_is_a_value_error_that_fails_the_execution(kernel, tmp_path):
    code = (
        "import polars as pl\n"
        "flowfile.publish_output(pl.DataFrame({'x': [1]}), name='output_0')\n"
        "flowfile.publish_output(pl.DataFrame({'x': [2]}))\n"
    )
    result = execute(kernel, code, output_dir=str(tmp_path / "out"))

    assert result.success is False
    assert result.error is not None
    assert result.error.startswith("ValueError: ")
    assert "'output_0'" in result.error
    assert result.output_paths == [str(tmp_path / "out" / "output_0.parquet")]


def test_a_publish_that_failed_does_not_use_up_its_name(kernel, tmp_path):
    code = (
        "import polars as pl\n"
        "bad = pl.LazyFrame({'a': [300]}).select(pl.col('a').cast(pl.UInt8, strict=True))\n"
        "for frame in (bad, bad):\n"
        "    try:\n"
        "        flowfile.publish_output(frame)\n"
        "    except pl.exceptions.InvalidOperationError:\n"
        "        pass\n"
        "flowfile.publish_output(pl.DataFrame({'a': [1]}), name='a')\n"
        "flowfile.publish_output(pl.DataFrame({'a': [2]}))\n"
    )
    result = execute(kernel, code, output_dir=str(tmp_path / "out"))

    assert result.success is True, result.error
    assert result.output_paths == [
        str(tmp_path / "out" / "a.parquet"),
        str(tmp_path / "out" / "output_0.parquet"),
    ]


# -- relative paths resolve against the start directory, never a changed one --------------


def _away_from_start(tmp_path: Path, relative: str) -> Path:
    """A directory from which `relative` (made against the start directory) leads elsewhere,
    but still inside tmp_path: as deep below tmp_path as `relative` climbs."""
    climbs = Path(relative).parts.count("..")
    away = tmp_path.joinpath("away", *["d"] * climbs)
    away.mkdir(parents=True)
    return away


def test_a_relative_output_dir_resolves_against_the_start_directory(kernel, tmp_path, monkeypatch):
    monkeypatch.chdir(START_DIR)  # puts back the working directory user code changes
    out = os.path.relpath(tmp_path / "out", START_DIR)
    away = _away_from_start(tmp_path, out)
    code = (
        f"import os\nimport polars as pl\nos.chdir({str(away)!r})\n"
        "flowfile.publish_output(pl.DataFrame({'x': [1, 2]}))\n"
    )
    result = execute(kernel, code, output_dir=out)

    assert result.success is True, result.error
    assert result.output_paths == [str(tmp_path / "out" / "output_0.parquet")]
    assert pl.read_parquet(tmp_path / "out" / "output_0.parquet")["x"].to_list() == [1, 2]
    assert not any(p.is_file() for p in (tmp_path / "away").rglob("*"))


def test_relative_input_paths_resolve_against_the_start_directory(kernel, tmp_path, monkeypatch):
    monkeypatch.chdir(START_DIR)
    source = tmp_path / "in.parquet"
    pl.DataFrame({"x": [3, 4]}).write_parquet(source)
    relative = os.path.relpath(source, START_DIR)
    away = _away_from_start(tmp_path, relative)
    code = (
        f"import os\nos.chdir({str(away)!r})\n"
        "print(flowfile.read_input().collect()['x'].to_list())\n"
    )
    result = execute(kernel, code, input_paths={"main": [relative]})

    assert result.success is True, result.error
    assert result.stdout == "[3, 4]\n"


# -- a name that is not a plain file name is refused, saying which rule it broke ------------

BAD_NAMES = [
    pytest.param("", "must not be empty", id="empty"),
    pytest.param("a/b", "must not contain '/'", id="slash"),
    pytest.param("../up", "must not contain '/'", id="dot-dot-slash"),
    pytest.param("a\\b", "must not contain '\\'", id="backslash"),
    pytest.param("a\x00b", "must not contain NUL", id="nul"),
    pytest.param("..", "a plain name, not '.' or '..'", id="dot-dot"),
    pytest.param(".", "a plain name, not '.' or '..'", id="dot"),
    pytest.param("a\udc80b", "not valid Unicode", id="lone-surrogate"),
]
# the file system's limit: 255 bytes for '<name>.parquet' in UTF-8
TOO_LONG = [
    pytest.param("x" * 300, id="300-characters"),
    pytest.param("x" * 248, id="one-byte-over"),
    pytest.param("\u00e9" * 124, id="multibyte-over"),
]


def _refused(kernel: Kernel, tmp_path: Path, name: str, output_dir: str) -> str:
    code = (
        f"import polars as pl\nflowfile.publish_output(pl.DataFrame({{'x': [1]}}), name={name!r})\n"
    )
    result = execute(kernel, code, output_dir=output_dir)

    assert result.success is False
    assert result.error is not None
    assert result.error.startswith("ValueError: output name ")
    assert result.output_paths == []
    assert list(tmp_path.rglob("*.parquet")) == []
    return result.error


@pytest.mark.parametrize(("name", "rule"), BAD_NAMES)
@pytest.mark.parametrize(
    "to_files", [pytest.param(True, id="files"), pytest.param(False, id="flight")]
)
def test_an_output_name_that_is_not_a_plain_file_name_is_refused_naming_the_rule(
    kernel, tmp_path, name, rule, to_files
):
    error = _refused(kernel, tmp_path, name, str(tmp_path / "out") if to_files else "")
    assert rule in error


@pytest.mark.parametrize("name", TOO_LONG)
def test_an_output_name_longer_than_a_file_name_may_be_is_refused_as_too_long(
    kernel, tmp_path, name
):
    error = _refused(kernel, tmp_path, name, str(tmp_path / "out"))
    assert "too long" in error
    assert "not writable" not in error


@pytest.mark.parametrize("name", TOO_LONG)
def test_a_long_output_name_is_kept_in_the_flight_store(kernel, name):
    code = (
        f"import polars as pl\nflowfile.publish_output(pl.DataFrame({{'x': [1]}}), name={name!r})\n"
    )
    result = execute(kernel, code)

    assert result.success is True, result.error
    assert result.output_paths == [f"flight:///outputs/0/n/{name}"]


@pytest.mark.parametrize(
    "name",
    [pytest.param("x" * 247, id="ascii-at-the-limit"), pytest.param("\u00e9" * 123, id="utf8")],
)
def test_the_longest_name_the_file_system_allows_is_written(kernel, tmp_path, name):
    out = tmp_path / "out"
    code = (
        f"import polars as pl\nflowfile.publish_output(pl.DataFrame({{'x': [1]}}), name={name!r})\n"
    )
    result = execute(kernel, code, output_dir=str(out))

    assert result.success is True, result.error
    assert result.output_paths == [str(out / f"{name}.parquet")]
    assert _files(out) == [f"{name}.parquet"]
