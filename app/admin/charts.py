"""The review page's small charts as geometry for inline SVG (no script, no inline style)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

DAY_CHART_HEIGHT = 120
DAY_BAR_WIDTH = 28
DAY_BAR_GAP = 6
LATENCY_WIDTH = 320
# What each part of a turn's time is called on the page.
LATENCY_PARTS = {
    "retrieval": "retrieval",
    "model": "model first token",
    "rest": "to first chunk",
    "answer": "rest of answer",
}


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: str
    kind: str = ""


def per_day_bars(days: list[tuple[date, int]]) -> list[Bar]:
    """One bar per day, scaled to the busiest day."""
    top = max((count for _, count in days), default=0) or 1
    bars = []
    for n, (day, count) in enumerate(days):
        height = DAY_CHART_HEIGHT * count / top
        x = n * (DAY_BAR_WIDTH + DAY_BAR_GAP)
        bars.append(Bar(x, DAY_CHART_HEIGHT - height, DAY_BAR_WIDTH, height, day.strftime("%d %b"), str(count)))
    return bars


def latency_bar(timings_ms: dict[str, float | None], scale_ms: float) -> list[Bar]:
    """A turn's time as segments on one line: retrieval, the model's first token, the rest to the
    first chunk, then the remainder of the answer, all on the call's longest turn's scale."""
    if not scale_ms:
        return []
    retrieval = timings_ms.get("retrieval") or 0.0
    model = timings_ms.get("llm_first_token") or 0.0
    first = timings_ms.get("first_chunk") or 0.0
    total = timings_ms.get("total") or first
    parts = [
        ("retrieval", retrieval),
        ("model", model),
        ("rest", max(first - retrieval - model, 0.0)),
        ("answer", max(total - first, 0.0)),
    ]
    bars, x = [], 0.0
    for kind, ms in parts:
        width = LATENCY_WIDTH * ms / scale_ms
        if width > 0:
            bars.append(Bar(x, 0, width, 12, LATENCY_PARTS[kind], f"{ms:.0f} ms", kind))
            x += width
    return bars
