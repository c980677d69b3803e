"""The `flowfile` module, exercised through executions (POST /execute)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

PRINT_FRAME = "import json\nprint(json.dumps(df.collect().to_dict(as_series=False)))\n"


def _printed(result: dict) -> object:
    assert result["success"] is True, result["error"]
    return json.loads(result["stdout"])


def _parquet(path: Path, **columns: list) -> str:
    pl.DataFrame(columns).write_parquet(path)
    return str(path)


# -- reading inputs ----------------------------------------------------------------------


def test_read_input_concatenates_every_file(run_code, tmp_path):
    files = [_parquet(tmp_path / "a.parquet", x=[1, 2]), _parquet(tmp_path / "b.parquet", x=[3])]
    result = run_code("df = flowfile.read_input()\n" + PRINT_FRAME, input_paths={"main": files})
    assert _printed(result) == {"x": [1, 2, 3]}


def test_read_first_reads_only_the_first_file(run_code, tmp_path):
    files = [_parquet(tmp_path / "a.parquet", x=[1, 2]), _parquet(tmp_path / "b.parquet", x=[3])]
    result = run_code("df = flowfile.read_first()\n" + PRINT_FRAME, input_paths={"main": files})
    assert _printed(result) == {"x": [1, 2]}


def test_read_input_by_name(run_code, tmp_path):
    inputs = {
        "main": [_parquet(tmp_path / "m.parquet", x=[1])],
        "customers": [_parquet(tmp_path / "c.parquet", name=["ann", "bob"])],
    }
    result = run_code(
        "df = flowfile.read_input(name='customers')\n" + PRINT_FRAME, input_paths=inputs
    )
    assert _printed(result) == {"name": ["ann", "bob"]}


def test_read_inputs_gives_every_input_lazily(run_code, tmp_path):
    inputs = {
        "main": [
            _parquet(tmp_path / "m1.parquet", x=[1]),
            _parquet(tmp_path / "m2.parquet", x=[2]),
        ],
        "customers": [_parquet(tmp_path / "c.parquet", name=["ann"])],
    }
    code = (
        "import json\nframes = flowfile.read_inputs()\n"
        "print(json.dumps({name: [type(lf).__name__, lf.collect().to_dict(as_series=False)]"
        " for name, lf in sorted(frames.items())}))\n"
    )
    assert _printed(run_code(code, input_paths=inputs)) == {
        "customers": ["LazyFrame", {"name": ["ann"]}],
        "main": ["LazyFrame", {"x": [1, 2]}],
    }


@pytest.mark.parametrize("suffix", [".arrow", ".feather", ".ipc"])
def test_arrow_ipc_files_are_read(run_code, tmp_path, suffix):
    first, second = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    feather.write_feather(pa.table({"x": [1, 2], "s": ["a", "b"]}), first)
    feather.write_feather(pa.table({"x": [3], "s": ["c"]}), second)
    code = (
        "df = flowfile.read_input()\nprint(type(df).__name__)\n"
        "import json\nprint(json.dumps(df.collect().to_dict(as_series=False)))\n"
        "print(flowfile.read_first().collect().height)\n"
    )
    result = run_code(code, input_paths={"main": [str(first), str(second)]})
    assert result["success"] is True, result["error"]
    kind, rows, first_height = result["stdout"].splitlines()
    assert kind == "LazyFrame"
    assert json.loads(rows) == {"x": [1, 2, 3], "s": ["a", "b", "c"]}
    assert first_height == "2"


def test_missing_input_name_raises_key_error_naming_the_available(run_code, tmp_path):
    inputs = {
        "main": [_parquet(tmp_path / "m.parquet", x=[1])],
        "left": [_parquet(tmp_path / "l.parquet", x=[1])],
    }
    code = (
        "try:\n    flowfile.read_input('right')\nexcept KeyError as exc:\n    print(exc.args[0])\n"
    )
    assert (
        run_code(code, input_paths=inputs)["stdout"]
        == "no input named 'right' (available: left, main)\n"
    )


# -- publishing outputs ------------------------------------------------------------------


def test_unnamed_outputs_are_numbered_among_unnamed_only(run_code, tmp_path):
    out = tmp_path / "out"
    code = (
        "import polars as pl\n"
        "flowfile.publish_output(pl.DataFrame({'x': [0]}))\n"
        "flowfile.publish_output(pl.DataFrame({'x': [10]}), name='named')\n"
        "flowfile.publish_output(pl.DataFrame({'x': [1]}))\n"
    )
    result = run_code(code, output_dir=str(out))

    assert result["output_paths"] == [
        str(out / "output_0.parquet"),
        str(out / "named.parquet"),
        str(out / "output_1.parquet"),
    ]
    assert [pl.read_parquet(p)["x"].to_list() for p in result["output_paths"]] == [[0], [10], [1]]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param("pl.DataFrame({'x': [1, 2], 's': ['a', None]})", id="DataFrame"),
        pytest.param("pl.DataFrame({'x': [1, 2], 's': ['a', None]}).lazy()", id="LazyFrame"),
        pytest.param("pa.table({'x': [1, 2], 's': ['a', None]})", id="pyarrow-Table"),
    ],
)
def test_publish_output_writes_parquet(run_code, tmp_path, make):
    code = f"import polars as pl\nimport pyarrow as pa\nflowfile.publish_output({make})\n"
    result = run_code(code, output_dir=str(tmp_path / "out"))
    assert result["success"] is True, result["error"]
    assert result["output_paths"] == [str(tmp_path / "out" / "output_0.parquet")]
    assert pq.read_table(result["output_paths"][0]).to_pydict() == {"x": [1, 2], "s": ["a", None]}


def test_a_lazy_output_is_computed_when_written(run_code, tmp_path):
    source = _parquet(tmp_path / "in.parquet", x=[1, 2, 3, 4])
    code = (
        "import polars as pl\n"
        "flowfile.publish_output(flowfile.read_input().filter(pl.col('x') > 2), name='big')\n"
    )
    result = run_code(code, input_paths={"main": [source]}, output_dir=str(tmp_path / "out"))
    assert pl.read_parquet(tmp_path / "out" / "big.parquet")["x"].to_list() == [3, 4]
    assert result["output_paths"] == [str(tmp_path / "out" / "big.parquet")]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("a/b", id="slash"),
        pytest.param("..", id="dot-dot"),
        pytest.param("../escape", id="dot-dot-slash"),
        pytest.param("", id="empty"),
    ],
)
@pytest.mark.parametrize(
    "to_files", [pytest.param(True, id="files"), pytest.param(False, id="flight")]
)
def test_output_names_that_are_not_plain_file_names_are_refused(run_code, tmp_path, name, to_files):
    out = tmp_path / "out"
    code = (
        f"import polars as pl\nflowfile.publish_output(pl.DataFrame({{'x': [1]}}), name={name!r})\n"
    )
    result = run_code(code, output_dir=str(out) if to_files else "")
    assert result["success"] is False
    assert result["error"].startswith("ValueError: ")
    assert repr(name) in result["error"]
    assert result["output_paths"] == []
    assert sorted(p.name for p in tmp_path.rglob("*")) in ([], ["out"])


def test_output_paths_lists_only_what_this_execution_wrote(run_code, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _parquet(out / "old.parquet", x=[9])
    _parquet(out / "output_7.parquet", x=[9])
    result = run_code(
        "import polars as pl\nflowfile.publish_output(pl.DataFrame({'x': [1]}))\n",
        output_dir=str(out),
    )
    assert result["output_paths"] == [str(out / "output_0.parquet")]


def test_flight_outputs_chain_into_the_next_execution(run_code, flight_client):
    first = run_code(
        "import polars as pl\n"
        "flowfile.publish_output(pl.DataFrame({'x': [1, 2], 's': ['a', 'b']}))\n",
        node_id="a",
        flow_id=4,
    )
    assert first["output_paths"] == ["flight:///outputs/4/a/output_0"]
    fetched = flight_client.do_get(flight.Ticket(b"outputs/4/a/output_0")).read_all()
    assert fetched.to_pydict() == {"x": [1, 2], "s": ["a", "b"]}

    second = run_code(
        "df = flowfile.read_input()\n" + PRINT_FRAME,
        node_id="b",
        flow_id=4,
        input_paths={"main": first["output_paths"]},
    )
    assert _printed(second) == {"x": [1, 2], "s": ["a", "b"]}


@pytest.mark.parametrize("output_dir", ["", "flight:///"])
def test_empty_or_flight_output_dir_publishes_to_the_flight_store(
    run_code, flight_client, output_dir
):
    result = run_code(
        "import polars as pl\n"
        "flowfile.publish_output(pl.DataFrame({'x': [1]}))\n"
        "flowfile.publish_output(pl.DataFrame({'x': [2]}), name='named')\n",
        node_id=7,
        flow_id=2,
        output_dir=output_dir,
    )
    assert result["output_paths"] == [
        "flight:///outputs/2/7/output_0",
        "flight:///outputs/2/7/named",
    ]
    fetched = flight_client.do_get(flight.Ticket(b"outputs/2/7/named")).read_all()
    assert fetched.to_pydict() == {"x": [2]}


def test_publish_output_refuses_what_is_not_a_table(run_code):
    result = run_code("flowfile.publish_output([1, 2, 3])")
    assert result["success"] is False
    assert result["error"].startswith("TypeError: ")
    assert "list" in result["error"]


# -- artifacts ---------------------------------------------------------------------------


def test_publish_read_list_delete_artifact(run_code):
    published = run_code("flowfile.publish_artifact('model', {'w': [1, 2]})", flow_id=1)
    assert published["published_artifacts"] == ["model"]

    read = run_code(
        "print(flowfile.read_artifact('model'))\n"
        "print([r['name'] for r in flowfile.list_artifacts()])\n",
        node_id="reader",
        flow_id=1,
    )
    assert read["stdout"] == "{'w': [1, 2]}\n['model']\n"

    deleted = run_code(
        "flowfile.delete_artifact('model')\nprint(flowfile.list_artifacts())\n",
        node_id="cleaner",
        flow_id=1,
    )
    assert deleted["deleted_artifacts"] == ["model"]
    assert deleted["published_artifacts"] == []
    assert deleted["stdout"] == "[]\n"


def test_artifacts_are_kept_as_is(run_code):
    run_code("flowfile.publish_artifact('items', [1, 2, 3])", node_id="a", flow_id=1)
    run_code("flowfile.read_artifact('items').append(4)", node_id="b", flow_id=1)
    result = run_code("print(flowfile.read_artifact('items'))", node_id="c", flow_id=1)
    assert result["stdout"] == "[1, 2, 3, 4]\n"


def test_flows_never_see_each_others_artifacts(run_code):
    run_code("flowfile.publish_artifact('secret', 'flow one')", node_id="a", flow_id=1)
    run_code("flowfile.publish_artifact('secret', 'flow two')", node_id="a", flow_id=2)
    run_code("flowfile.publish_artifact('mine', 3)", node_id="a", flow_id=3)

    code = (
        "print(flowfile.read_artifact('secret'))\n"
        "print(sorted((r['flow_id'], r['name']) for r in flowfile.list_artifacts()))\n"
    )
    assert run_code(code, node_id="b", flow_id=1)["stdout"] == "flow one\n[(1, 'secret')]\n"
    assert run_code(code, node_id="b", flow_id=2)["stdout"] == "flow two\n[(2, 'secret')]\n"
    other = run_code(code, node_id="b", flow_id=3)
    assert other["error"] == "KeyError: no artifact 'secret' in flow 3 (known: mine)"


def test_another_node_publishing_an_existing_name_is_refused(run_code):
    run_code("flowfile.publish_artifact('model', 1)", node_id="trainer", flow_id=1)
    result = run_code("flowfile.publish_artifact('model', 2)", node_id="intruder", flow_id=1)
    assert result["success"] is False
    assert result["error"].startswith("ValueError: ")
    assert "'model'" in result["error"]
    assert "'trainer'" in result["error"]
    assert (
        run_code("print(flowfile.read_artifact('model'))", node_id="x", flow_id=1)["stdout"]
        == "1\n"
    )


def test_the_publishing_node_may_publish_again_in_one_execution(run_code):
    result = run_code(
        "flowfile.publish_artifact('m', 1)\nflowfile.publish_artifact('m', 2)\n"
        "print(flowfile.read_artifact('m'))",
        node_id=7,
        flow_id=1,
    )
    assert result["stdout"] == "2\n"
    assert result["published_artifacts"] == ["m"]


@pytest.mark.parametrize("call", ["read_artifact", "delete_artifact"])
def test_missing_artifact_raises_key_error_naming_what_exists(run_code, call):
    run_code(
        "flowfile.publish_artifact('alpha', 1)\nflowfile.publish_artifact('beta', 2)",
        node_id="a",
        flow_id=1,
    )
    code = f"try:\n    flowfile.{call}('gamma')\nexcept KeyError as exc:\n    print(exc.args[0])\n"
    assert (
        run_code(code, node_id="b", flow_id=1)["stdout"]
        == "no artifact 'gamma' in flow 1 (known: alpha, beta)\n"
    )


@pytest.mark.parametrize("name", ["a/b", "..", ""])
def test_artifact_names_that_are_not_plain_are_refused(run_code, name):
    result = run_code(f"flowfile.publish_artifact({name!r}, 1)")
    assert result["success"] is False
    assert result["error"].startswith("ValueError: ")
    assert result["published_artifacts"] == []


def test_list_artifacts_returns_the_records_of_get_artifacts(run_code, client):
    run_code(
        "import polars as pl\n"
        "flowfile.publish_artifact('frame', pl.DataFrame({'x': list(range(1000))}))",
        node_id="a",
        flow_id=1,
    )
    run_code("flowfile.publish_artifact('other_flow', 1)", node_id="a", flow_id=2)
    result = run_code(
        "import json\nflowfile.publish_artifact('n', 5)\n"
        "print(json.dumps(flowfile.list_artifacts()))",
        node_id=7,
        flow_id=1,
    )

    def unpersisted(records):  # persisting goes on in the background between the two
        return [{k: v for k, v in r.items() if k != "persisted"} for r in records]

    listed = json.loads(result["stdout"])
    assert unpersisted(listed) == unpersisted(
        client.get("/artifacts", params={"flow_id": 1}).json()
    )
    assert sorted(r["name"] for r in listed) == ["frame", "n"]
    frame = next(r for r in listed if r["name"] == "frame")
    assert frame["type_name"] == "DataFrame"
    assert frame["size_bytes"] >= 8000  # the column's buffer, not a shallow size


# -- logging -----------------------------------------------------------------------------


def test_logging_goes_to_the_response_and_the_server_log(run_code, caplog):
    caplog.set_level(logging.DEBUG, logger="flowfile")
    code = (
        "flowfile.log('started')\n"
        "flowfile.log('details', level='debug')\n"
        "flowfile.log_info('step 1 complete')\n"
        "flowfile.log_warning('missing values')\n"
        "flowfile.log_error('bad record')\n"
    )
    result = run_code(code, node_id="n7", flow_id=3)

    assert [(r["level"], r["message"]) for r in result["logs"]] == [
        ("INFO", "started"),
        ("DEBUG", "details"),
        ("INFO", "step 1 complete"),
        ("WARNING", "missing values"),
        ("ERROR", "bad record"),
    ]
    assert {(r["flow_id"], r["node_id"]) for r in result["logs"]} == {(3, "n7")}
    server_log = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "flowfile"]
    assert server_log == [
        ("INFO", "[flow 3 node n7] started"),
        ("DEBUG", "[flow 3 node n7] details"),
        ("INFO", "[flow 3 node n7] step 1 complete"),
        ("WARNING", "[flow 3 node n7] missing values"),
        ("ERROR", "[flow 3 node n7] bad record"),
    ]


def test_unknown_log_level_is_refused(run_code):
    result = run_code("flowfile.log('x', level='LOUD')")
    assert result["success"] is False
    assert result["error"].startswith("ValueError: ")
    assert "'LOUD'" in result["error"]


def test_a_missing_artifacts_traceback_shows_only_the_users_code(run_code) -> None:
    result = run_code("x = 1\nflowfile.read_artifact('nope')", flow_id=3)

    assert result["error"].startswith("KeyError: ")
    frames = [line for line in result["traceback"].splitlines() if line.startswith("  File")]
    assert frames == ['  File "<node node_1>", line 2, in <module>']
