"""Retrieval details a caller would feel as a wrong answer: query terms must be the index's terms."""

from __future__ import annotations

import pytest

from app.knowledge.retrieval import _tokenize, query_terms

QUERIES = [
    "What time does the shop open on Saturdays?",
    "my router's light is blinking RED, what's that mean",
    "Error 0x80070005 when I install the IDE 2.3.1",
    "café opening hours — naïve résumé ÉTÉ",
    "I I a an the of to",  # only stopwords and one-letter words
    "",
    "   ",
    "ports_and_USB-C adapters; Nano33 BLE/Sense",
    "refunds refunding refunded refund",
]


@pytest.mark.parametrize("query", QUERIES)
def test_query_terms_are_what_the_index_was_tokenised_with(query: str) -> None:
    assert query_terms(query) == _tokenize([query])[0]
