"""Cancels that name their target (SPEC §3): `execution_id` given or minted, and
`/interrupt {"execution_id"}` stopping exactly that execution."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi.testclient import TestClient

from tests.helpers import Latch

DEADLINE_S = 60.0


def _execute(client: TestClient, code: str, **fields: object) -> dict:
    answer = client.post("/execute", json={"node_id": "n", "code": code, **fields})
    assert answer.status_code == 200, answer.text
    body: dict = answer.json()
    return body


def test_a_given_execution_id_is_echoed_and_a_missing_one_minted(client: TestClient) -> None:
    given = _execute(client, "x = 1", execution_id="mine-1")
    minted = [_execute(client, "x = 1")["execution_id"] for _ in range(2)]

    assert given["execution_id"] == "mine-1"
    assert all(len(m) == 32 and int(m, 16) >= 0 for m in minted)
    assert minted[0] != minted[1]


def test_an_interrupt_by_execution_id_stops_exactly_that_one(
    client: TestClient, tmp_path: Path
) -> None:
    one, two = Latch(tmp_path / "one"), Latch(tmp_path / "two")
    release = Latch(tmp_path / "release")
    target = f"{one.set_code()}\nimport time\nwhile True:\n    time.sleep(0.01)\n"
    other = f"{two.set_code()}\n{release.wait_code(DEADLINE_S)}print('finished')\n"
    with ThreadPoolExecutor(2) as pool:
        stopped = pool.submit(_execute, client, target, node_id="a", execution_id="target")
        kept = pool.submit(_execute, client, other, node_id="b", execution_id="other")
        one.wait(DEADLINE_S, "the target to run")
        two.wait(DEADLINE_S, "the other to run")

        answer = client.post("/interrupt", json={"execution_id": "target"}).json()
        stopped_result = stopped.result(DEADLINE_S)
        release.set()
        kept_result = kept.result(DEADLINE_S)

    assert [i["execution_id"] for i in answer["interrupted"]] == ["target"]
    assert stopped_result["error"].startswith("Interrupted")
    assert kept_result["success"] is True
    assert kept_result["stdout"] == "finished\n"


def test_the_id_of_a_finished_execution_interrupts_nothing(client: TestClient) -> None:
    done = _execute(client, "x = 1", execution_id="done-1")

    answer = client.post("/interrupt", json={"execution_id": done["execution_id"]})

    assert answer.json() == {"interrupted": []}


def test_an_interrupt_field_that_is_not_understood_is_refused(client: TestClient) -> None:
    answer = client.post("/interrupt", json={"executionid": "typo"})

    assert answer.status_code == 422
    assert "executionid" in answer.text
