"""The image's pins: the installed versions of kernel-runtime's runtime dependency closure.

`make constraints` writes them to constraints.txt (`python -m tests.image.constraints`); the
Dockerfile installs exactly these, so the image runs the versions the suite was run with.
"""

from __future__ import annotations

import sys
from importlib.metadata import distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "kernel-runtime"
HEADER = (
    "# Versions the image installs: kernel-runtime's runtime dependencies as installed in\n"
    "# the development venv. Regenerate with `make constraints`.\n"
)


def _wanted(req: Requirement, extras: frozenset[str]) -> bool:
    """Whether `req` applies on this interpreter when the given extras were asked for."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": extra}) for extra in extras or {""})


def runtime_closure(project: str = PROJECT) -> dict[str, frozenset[str]]:
    """Every distribution `project` needs at run time (canonical name → extras asked for)."""
    found: dict[str, frozenset[str]] = {}
    todo: list[tuple[str, frozenset[str]]] = [(project, frozenset())]
    while todo:
        name, extras = todo.pop()
        for spec in distribution(name).requires or []:
            req = Requirement(spec)
            if not _wanted(req, extras):
                continue
            key = canonicalize_name(req.name)
            known = found.get(key)
            if known is not None and set(req.extras) <= known:
                continue
            found[key] = (known or frozenset()) | frozenset(req.extras)
            todo.append((req.name, frozenset(req.extras)))
    return found


def pins() -> list[str]:
    """`name==version` lines for the closure, sorted by canonical name."""
    lines = []
    for key in sorted(runtime_closure()):
        dist = distribution(key)
        lines.append(f"{dist.metadata['Name']}=={dist.version}")
    return lines


def pinned_names(text: str) -> set[str]:
    """The canonical names a constraints file pins."""
    names: set[str] = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(canonicalize_name(Requirement(line).name))
    return names


def pinned_version(text: str, name: str) -> str:
    """The version a constraints file pins `name` at (`name==version`)."""
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            if canonicalize_name(req.name) == canonicalize_name(name):
                (spec,) = req.specifier
                return spec.version
    raise KeyError(f"{name} is not pinned (pinned: {sorted(pinned_names(text))})")


def main() -> None:
    """Print constraints.txt."""
    sys.stdout.write(HEADER + "".join(f"{line}\n" for line in pins()))


if __name__ == "__main__":
    main()
