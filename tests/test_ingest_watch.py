"""`make ingest ARGS=--watch`: documents written into the watched folder reach the index on their own,
a burst of writes as one ingest; embedded and on a Chroma server."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

from app.settings import Settings
from tests.support.index import Running, answers, write_kb

MakeSettings = Callable[..., Settings]


def _reports(run: Running) -> list[dict]:
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def test_watch_ingests_what_is_written_and_a_burst_once(
    index_settings: MakeSettings, tmp_path: Path, running: list[Running]
) -> None:
    settings = index_settings()
    kb = write_kb(tmp_path / "kb")
    run = Running(settings, "--watch", "--json")
    running.append(run)
    run.wait_for(r"watching .* for changes")
    assert [r["build"] for r in _reports(run)] == [1]

    written = time.monotonic()
    (kb / "gift-cards.md").write_text("# Gift cards\n\nGift cards never expire and work in every store.\n")
    run.wait_for(r'"build": 2', stream="stdout", timeout=60)
    assert ("gift-cards.md", "Gift cards never expire and work in every store.") in answers(
        settings, "do gift cards expire"
    )
    print(f"\nwatch: a new page was searchable {time.monotonic() - written:.1f} s after it was written")

    (kb / "faq").mkdir()
    for n in range(12):  # an editor or a copy writing many files one after another
        (kb / "faq" / f"question-{n}.md").write_text(f"# Question {n}\n\nThe answer to question {n} is {n * 7}.\n")
    run.wait_for(r'"build": 3', stream="stdout", timeout=60)
    third = _reports(run)[-1]
    assert (third["added"], third["changed"], third["removed"]) == (12, 0, 0)  # all twelve in one ingest

    run.process.send_signal(signal.SIGTERM)  # as a service manager stops it (Ctrl-C does the same)
    assert run.finish() == 0
    assert [r["build"] for r in _reports(run)] == [1, 2, 3]
