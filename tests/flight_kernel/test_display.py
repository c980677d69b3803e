"""Rich display and interactive mode (SPEC §10): `flowfile.display`, `display_outputs`, the
`_repr_*_` protocol, frames, matplotlib figures, and `GET /display_outputs`."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

os.environ.setdefault("MPLBACKEND", "Agg")  # as in a kernel process: figures never open windows

Run = Callable[..., dict[str, Any]]
PNG = b"\x89PNG\r\n\x1a\n"

RICH = """
class Rich:
    def _repr_html_(self):
        return "<b>rich</b>"
    def _repr_markdown_(self):
        return "**rich**"
    def _repr_svg_(self):
        return "<svg></svg>"
    def _repr_png_(self):
        return b"\\x89PNG\\r\\n\\x1a\\nfake"
    def _repr_json_(self):
        return {"rich": True}
    def __repr__(self):
        return "Rich()"
"""


def _data(result: dict[str, Any], i: int = 0) -> dict[str, Any]:
    assert result["success"], result
    data: dict[str, Any] = result["display_outputs"][i]["data"]
    return data


def test_display_gives_a_mime_bundle_with_its_title(run_code: Run) -> None:
    result = run_code("flowfile.display([1, 2], title='numbers')")

    assert result["display_outputs"] == [
        {"data": {"text/plain": "[1, 2]"}, "metadata": {}, "title": "numbers"}
    ]


def test_a_string_displays_as_its_own_text_never_guessed_as_html(run_code: Run) -> None:
    result = run_code("flowfile.display('<b>not html</b>')")

    assert _data(result) == {"text/plain": "<b>not html</b>"}


def test_every_repr_hook_goes_into_the_bundle(run_code: Run) -> None:
    data = _data(run_code(RICH + "flowfile.display(Rich())"))

    assert data == {
        "text/html": "<b>rich</b>",
        "text/markdown": "**rich**",
        "image/svg+xml": "<svg></svg>",
        "image/png": base64.b64encode(PNG + b"fake").decode(),
        "application/json": {"rich": True},
        "text/plain": "Rich()",
    }


def test_a_mimebundle_wins_and_the_other_hooks_fill_in(run_code: Run) -> None:
    code = (
        "class B:\n"
        "    def _repr_mimebundle_(self, include=None, exclude=None):\n"
        "        return {'text/html': '<i>bundle</i>'}, {'text/html': {'isolated': True}}\n"
        "    def _repr_html_(self):\n"
        "        return '<i>hook</i>'\n"
        "    def _repr_markdown_(self):\n"
        "        return '*md*'\n"
        "flowfile.display(B())\n"
    )
    result = run_code(code)

    [shown] = result["display_outputs"]
    assert shown["data"]["text/html"] == "<i>bundle</i>"
    assert shown["data"]["text/markdown"] == "*md*"
    assert shown["data"]["text/plain"].startswith("<__main__.B object")
    assert shown["metadata"] == {"text/html": {"isolated": True}}


def test_a_broken_repr_hook_does_not_fail_the_execution(run_code: Run) -> None:
    code = (
        "class Broken:\n"
        "    def _repr_html_(self):\n"
        "        raise RuntimeError('no')\n"
        "    def __repr__(self):\n"
        "        raise RuntimeError('neither')\n"
        "flowfile.display(Broken())\n"
    )
    data = _data(run_code(code))

    assert data == {"text/plain": "<Broken object (repr failed: RuntimeError)>"}


@pytest.mark.parametrize(
    "make",
    [
        pytest.param("import polars as pl\nframe = pl.DataFrame({'a': [1, 2]})", id="polars"),
        pytest.param("import pandas as pd\nframe = pd.DataFrame({'a': [1, 2]})", id="pandas"),
    ],
)
def test_frames_display_as_html_and_text(run_code: Run, make: str) -> None:
    data = _data(run_code(f"{make}\nflowfile.display(frame)"))

    assert "<table" in data["text/html"]
    assert "a" in data["text/plain"]


def test_displays_before_a_failure_are_kept(run_code: Run) -> None:
    result = run_code("flowfile.display('first')\nraise ValueError('then this')")

    assert result["success"] is False
    assert [d["data"]["text/plain"] for d in result["display_outputs"]] == ["first"]


def test_a_display_from_a_thread_the_execution_started_lands_in_it(run_code: Run) -> None:
    code = (
        "import threading\n"
        "t = threading.Thread(target=lambda: flowfile.display('from a thread'))\n"
        "t.start()\nt.join()\n"
    )
    result = run_code(code)

    assert [d["data"]["text/plain"] for d in result["display_outputs"]] == ["from a thread"]


def test_displays_beyond_the_cap_are_dropped_and_counted(client: TestClient) -> None:
    limit = client.app.state.settings.max_stream_bytes  # type: ignore[attr-defined]
    code = f"for i in range(5):\n    flowfile.display('x' * {limit // 2 - 10})\n"
    result = client.post("/execute", json={"node_id": "n", "code": code}).json()

    shown = [d["data"]["text/plain"] for d in result["display_outputs"]]
    assert len(shown) == 3
    assert shown[-1] == f"[3 displays dropped beyond the {limit}-byte limit]"


def test_an_open_matplotlib_figure_is_displayed_as_png_and_closed(run_code: Run) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\n"
    first = run_code(code)
    second = run_code("import matplotlib.pyplot as plt\nprint(plt.get_fignums())", node_id="b")

    [figure] = first["display_outputs"]
    assert base64.b64decode(figure["data"]["image/png"]).startswith(PNG)
    assert second["stdout"] == "[]\n"  # closed once displayed
    assert second["display_outputs"] == []


def test_figures_are_displayed_when_the_code_fails_too(run_code: Run) -> None:
    result = run_code("import matplotlib.pyplot as plt\nplt.figure()\nraise ValueError('x')")

    assert result["success"] is False
    assert [list(d["data"]) for d in result["display_outputs"]] == [["image/png", "text/plain"]]


def test_code_that_never_imports_matplotlib_never_loads_it() -> None:
    code = (
        "import sys\n"
        "from flight_kernel.kernel import Kernel\n"
        "from flight_kernel.requests import ExecuteRequest\n"
        "from flight_kernel.settings import Settings\n"
        "from flight_kernel.store import Store\n"
        "k = Kernel(Settings(), Store.private())\n"
        "r = k.execute(ExecuteRequest(node_id=1, code='flowfile.display([1])', interactive=True))\n"
        "assert r.success, r\n"
        "print('matplotlib' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout == "False\n"


# -- interactive ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        pytest.param("x = 20\nx + 22", ["42"], id="final-expression"),
        pytest.param("x = 1", [], id="final-statement"),
        pytest.param("None", [], id="none"),
        pytest.param("print('p')", [], id="print"),
        pytest.param("flowfile.display('d')", ["d"], id="display-call"),
        pytest.param("'text'", ["text"], id="string"),
    ],
)
def test_interactive_displays_a_final_bare_expression(
    run_code: Run, code: str, shown: list[str]
) -> None:
    result = run_code(code, interactive=True)

    assert result["success"], result
    assert [d["data"]["text/plain"] for d in result["display_outputs"]] == shown


def test_without_interactive_a_final_expression_is_not_displayed(run_code: Run) -> None:
    assert run_code("1 + 1")["display_outputs"] == []


def test_interactive_keeps_line_numbers_and_syntax_errors(run_code: Run) -> None:
    failed = run_code("x = 1\n1 / 0", interactive=True)
    broken = run_code("x = (", interactive=True)

    assert failed["error"] == "ZeroDivisionError: division by zero"
    assert "line 2, in <module>" in failed["traceback"]
    assert broken["error_kind"] == "syntax"


def test_interactive_must_be_a_boolean(client: TestClient) -> None:
    answer = client.post("/execute", json={"node_id": 1, "code": "1", "interactive": "yes"})

    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "interactive"]


# -- GET /display_outputs ------------------------------------------------------------------


def test_display_outputs_returns_a_nodes_last_ones(client: TestClient, run_code: Run) -> None:
    run_code("flowfile.display('old')", node_id="n", flow_id=4)
    run_code("flowfile.display('new')", node_id="n", flow_id=4)
    run_code("flowfile.display('other node')", node_id="m", flow_id=4)

    got = client.get("/display_outputs", params={"flow_id": 4, "node_id": "n"}).json()
    never = client.get("/display_outputs", params={"flow_id": 4, "node_id": "never"}).json()

    assert [d["data"]["text/plain"] for d in got] == ["new"]
    assert never == []


def test_clear_drops_a_flows_display_outputs(client: TestClient, run_code: Run) -> None:
    run_code("flowfile.display('shown')", node_id="n", flow_id=5)

    client.post("/clear", params={"flow_id": 5})

    assert client.get("/display_outputs", params={"flow_id": 5, "node_id": "n"}).json() == []


def test_display_outputs_needs_a_node(client: TestClient) -> None:
    assert client.get("/display_outputs", params={"flow_id": 1}).status_code == 422
