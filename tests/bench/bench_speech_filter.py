"""The speech filter's cost per chunk (bar: well under 0.1 ms), on the token streams a model sends:
plain prose, and prose full of markdown, links, addresses and emoji. Every chunk of every answer
passes the filter on the event loop, so this is added to every turn's time to first chunk."""

from __future__ import annotations

import re
import statistics
import time

from app.brain.speech_filter import SpeechFilter

PLAIN = (
    "Customers who pay by autopay get five dollars off every monthly bill. The discount starts on the first "
    "bill after autopay is set up, and it stops if autopay is turned off or a payment fails twice in a row. "
    "You can set it up in the My Kestrel app under Billing, or call us and we will do it for you. "
)
MARKDOWN = (
    "## Autopay\n**Autopay** takes *$5* off every bill.\n- Set it up in the [My Kestrel app](https://kestrel"
    ".example/app)\n- Or write to billing@kestrel.example 👍\n\n| Plan | Price |\n|---|---|\n| Swift Gig | $75 |\n"
    "1. Open `Billing`\n2. Choose ~~Paper~~ Autopay. Visit www.kestrel.example for more. "
)
ROUNDS = 200


def tokens(text: str) -> list[str]:
    """Model-like tokens: words with their leading space, and punctuation and symbols on their own."""
    return re.findall(r" ?[A-Za-z0-9$']+|\s+|[^\sA-Za-z0-9]", text)


def per_chunk_us(stream: list[str]) -> tuple[float, float]:
    samples = []
    for _ in range(ROUNDS):
        spoken = SpeechFilter()
        started = time.perf_counter_ns()
        for chunk in stream:
            spoken.feed(chunk)
        spoken.flush()
        samples.append((time.perf_counter_ns() - started) / len(stream) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def test_speech_filter_cost_per_chunk() -> None:
    for name, text in (("plain prose", PLAIN * 4), ("markdown-heavy", MARKDOWN * 4)):
        stream = tokens(text)
        median, p99 = per_chunk_us(stream)
        print(
            f"\nspeech filter, {name}: {median:.2f} µs per chunk (p99 of {ROUNDS} answers {p99:.2f} µs), "
            f"{len(stream)} chunks per answer; bar: well under 100 µs"
        )
        assert median < 100
