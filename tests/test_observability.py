"""Logs never carry a caller's phone number or card number in full."""

from __future__ import annotations

import json
import logging

import pytest

from app.observability import JsonFormatter, mask_digits


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("caller +15551230001 asked", "5551230"),
        ("call me on (555) 201-4400 please", "201-44"),
        ("my card is 4111 1111 1111 1111", "4111 1111 1111"),
        ("card 4111-1111-1111-1111 expired", "4111-1111"),
    ],
)
def test_phone_and_card_numbers_are_masked(text: str, hidden: str) -> None:
    masked = mask_digits(text)
    assert hidden not in masked and "*" in masked


@pytest.mark.parametrize(
    "text", ["build 20261126T225924Z live", "listening on 127.0.0.1:3001", "event 42 took 12.5 ms"]
)
def test_ordinary_numbers_stay_readable(text: str) -> None:
    assert mask_digits(text) == text


def test_json_log_lines_are_masked() -> None:
    record = logging.LogRecord("switchboard", logging.INFO, __file__, 1, "message from %s", ("+15551230001",), None)
    line = json.loads(JsonFormatter().format(record))
    assert "5551230001" not in line["msg"] and line["msg"].endswith("01")
