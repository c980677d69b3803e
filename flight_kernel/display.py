"""Rich display: objects as Jupyter `display_data` MIME bundles.

`bundle(obj, title)` asks the object itself, as IPython does: `_repr_mimebundle_`, then
`_repr_html_`, `_repr_markdown_`, `_repr_svg_`, `_repr_png_`, `_repr_jpeg_`, `_repr_json_`,
and `repr` for `text/plain` (a `str` shows as its own text). Only an object that says it is
HTML gives `text/html`: text is never guessed to be markup. polars and pandas frames have
`_repr_html_` (bounded rows); a matplotlib figure gives `image/png`. Binary payloads are
base64, as in a notebook file.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flight_kernel.context import ExecutionContext

logger = logging.getLogger(__name__)

# Each hook, the MIME type it gives, and whether its result is bytes (base64 in the bundle).
_HOOKS = (
    ("_repr_html_", "text/html", False),
    ("_repr_markdown_", "text/markdown", False),
    ("_repr_svg_", "image/svg+xml", False),
    ("_repr_png_", "image/png", True),
    ("_repr_jpeg_", "image/jpeg", True),
    ("_repr_json_", "application/json", False),
)


def _is_figure(obj: Any) -> bool:
    figure = sys.modules.get("matplotlib.figure")  # loaded only if user code loaded it
    return figure is not None and isinstance(obj, figure.Figure)


def _figure_png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _encoded(value: Any, binary: bool) -> Any:
    if binary and isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _call(obj: Any, hook: str) -> Any:
    """`obj.<hook>()`, or None when it lacks it, declines, or fails (logged, not raised: a
    broken repr must not fail the user's execution)."""
    method = getattr(type(obj), hook, None)
    if method is None:
        return None
    try:
        return method(obj)
    except Exception as exc:
        logger.info("%s.%s failed: %s: %s", type(obj).__name__, hook, type(exc).__name__, exc)
        return None


def _plain(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    try:
        return repr(obj)
    except Exception as exc:  # a repr that raises still displays something
        return f"<{type(obj).__name__} object (repr failed: {type(exc).__name__})>"


def bundle(obj: Any, title: str = "") -> dict[str, Any]:
    """The display of `obj`: `{"data": {mime: payload}, "metadata": {...}, "title": title}`."""
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    if _is_figure(obj):
        data["image/png"] = _figure_png(obj)
    elif not isinstance(obj, str):
        found = _call(obj, "_repr_mimebundle_")
        if isinstance(found, tuple) and len(found) == 2:
            found, meta = found
            if isinstance(meta, dict):
                metadata.update(meta)
        if isinstance(found, dict):
            for mime, value in found.items():
                data[str(mime)] = _encoded(value, mime.startswith("image/") and "svg" not in mime)
        for hook, mime, binary in _HOOKS:
            if mime in data:
                continue
            value = _call(obj, hook)
            if isinstance(value, tuple) and len(value) == 2:  # (data, metadata)
                value, meta = value
                if isinstance(meta, dict):
                    metadata[mime] = meta
            if value is not None:
                data[mime] = _encoded(value, binary)
    data.setdefault("text/plain", _plain(obj))
    if "application/json" in data and not isinstance(data["application/json"], dict | list):
        with contextlib.suppress(TypeError, ValueError):
            data["application/json"] = json.loads(data["application/json"])
    return {"data": data, "metadata": metadata, "title": title}


def size(display: dict[str, Any]) -> int:
    """What a display costs against the output cap: its payloads' lengths."""
    return sum(len(str(v)) for v in display["data"].values()) + len(display["title"])


def open_figures() -> list[Any]:
    """The matplotlib figures user code left open (none when it never imported pyplot)."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return []
    return [pyplot.figure(n) for n in pyplot.get_fignums()]


def close_figures() -> None:
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")


def show(ctx: ExecutionContext, obj: Any, title: str = "") -> None:
    """Add the display of `obj` to an execution; beyond the cap (the stdout cap, for every
    display of the execution together) it is dropped and counted."""
    shown = bundle(obj, title)
    cost = size(shown)
    with ctx.output_lock:
        if ctx.display_bytes + cost > ctx.stdout.limit:
            ctx.displays_dropped += 1
            return
        ctx.display_bytes += cost
        ctx.displays.append(shown)
        if ctx.events is not None:
            ctx.events.put("display", **shown)


def finished(ctx: ExecutionContext) -> list[dict[str, Any]]:
    """An execution's displays, with a last one saying how many were dropped, if any."""
    found = list(ctx.displays)
    if ctx.displays_dropped:
        note = f"[{ctx.displays_dropped} displays dropped beyond the {ctx.stdout.limit}-byte limit]"
        found.append({"data": {"text/plain": note}, "metadata": {}, "title": ""})
    return found


def show_figures(ctx: ExecutionContext) -> None:
    """Display the matplotlib figures left open, then close them (nothing happens, and
    matplotlib is not loaded, for code that never imported pyplot)."""
    try:
        for fig in open_figures():
            show(ctx, fig)
    except Exception as exc:  # a figure that cannot render must not fail the execution
        logger.info("open figures could not be displayed: %s: %s", type(exc).__name__, exc)
    finally:
        close_figures()
