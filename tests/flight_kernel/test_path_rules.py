"""The rules of a Flight path's segments (SPEC §4): one spelling per path, no aliases."""

from __future__ import annotations

import pytest

from flight_kernel.errors import InvalidRequest
from flight_kernel.paths import ArtifactPath, FlightPath, OutputPath, parse_ticket

FLOW_ID_ALIASES = [
    pytest.param("1_0", id="underscore"),
    pytest.param("1_000", id="underscore-thousands"),
    pytest.param("+1", id="plus-sign"),
    pytest.param(" 1", id="leading-space"),
    pytest.param("1 ", id="trailing-space"),
    pytest.param("\t1", id="leading-tab"),
    pytest.param("1\n", id="trailing-newline"),
    pytest.param("\u0661", id="arabic-indic-digit"),
    pytest.param("\uff11", id="fullwidth-digit"),
    pytest.param("\u0967\u0966", id="devanagari-digits"),
    pytest.param("-", id="sign-only"),
    pytest.param("--1", id="double-minus"),
    pytest.param("- 1", id="minus-space"),
    pytest.param("1-", id="trailing-minus"),
    pytest.param("0x1", id="hex"),
    pytest.param("1e3", id="exponent"),
]


@pytest.mark.parametrize("flow_id", FLOW_ID_ALIASES)
@pytest.mark.parametrize(
    "template",
    [pytest.param("artifacts/{}/x", id="artifact"), pytest.param("outputs/{}/n/x", id="output")],
)
def test_a_flow_id_that_is_not_plain_ascii_digits_is_refused_naming_it(
    flow_id: str, template: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_ticket(template.format(flow_id).encode())
    assert f"flow id {flow_id!r}" in info.value.message
    assert "ASCII digits" in info.value.message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b"artifacts/10/x", ArtifactPath(10, "x"), id="digits"),
        pytest.param(b"artifacts/-3/x", ArtifactPath(-3, "x"), id="negative"),
        pytest.param(b"outputs/0/n/x", OutputPath(0, "n", "x"), id="zero"),
    ],
)
def test_a_flow_id_of_ascii_digits_with_an_optional_minus_parses(
    raw: bytes, expected: FlightPath
) -> None:
    assert parse_ticket(raw) == expected


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        pytest.param(b"tables/", "must not be empty", id="empty"),
        pytest.param(b"tables/a\\b", "must not contain '\\'", id="backslash"),
        pytest.param(b"tables/a\x00b", "must not contain NUL", id="nul"),
        pytest.param(b"tables/..", "a plain name, not '.' or '..'", id="dot-dot"),
        pytest.param(b"outputs/1/./x", "a plain name, not '.' or '..'", id="dot-node"),
    ],
)
def test_a_bad_segment_is_refused_saying_which_rule_it_broke(raw: bytes, rule: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_ticket(raw)
    assert rule in info.value.message
