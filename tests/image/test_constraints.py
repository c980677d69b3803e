"""constraints.txt pins every runtime dependency of the project (no container needed)."""

from __future__ import annotations

from pathlib import Path

from tests.image.constraints import pinned_names, runtime_closure

CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"


def test_constraints_pin_the_runtime_dependencies() -> None:
    pinned = pinned_names(CONSTRAINTS.read_text())
    needed = set(runtime_closure())
    assert pinned == needed, (
        f"constraints.txt is out of step with pyproject.toml (missing {sorted(needed - pinned)}, "
        f"extra {sorted(pinned - needed)}): run `make constraints`"
    )
