"""`python -m ingest` killed with SIGKILL in each stage, and two ingests at once, in separate
processes, on the embedded store and on a Chroma server.

The ingest stops itself a little way into a stage (--pause-at, SIGSTOP) and announces it; the test
sees it stopped, then kills it: a real crash at a known point, not a mock.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from app.settings import Settings
from ingest.pipeline import run_ingest
from tests.support.index import (
    PLANS,
    Running,
    answers,
    assert_tidy,
    clear_server,
    live_texts,
    pointer,
    server_address,
    stored,
    write_kb,
)

MakeSettings = Callable[..., Settings]
QUESTION = "when are your phone lines open"


def _long_document(kb: Path, sections: int = 80) -> None:
    rng = random.Random(5)
    words = "router bill outage install move refund phone fibre mesh signal account payment".split()
    body = [f"# Field Manual\n\n## Procedure {i}\n\n" + " ".join(rng.choices(words, k=60)) for i in range(sections)]
    (kb / "manual.md").write_text("\n\n".join(body))


def _edit(kb: Path) -> None:
    """A change that parses two files, embeds several batches, writes new records and ends old runs."""
    _long_document(kb)
    (kb / "plans.md").write_text(PLANS.replace("$35 a month", "$39 a month"))
    (kb / "support" / "hours.txt").unlink()


@pytest.mark.parametrize("stage", ["parsing", "embedding", "writing", "switching"])
def test_sigkill_in_each_stage_leaves_the_live_build_and_the_next_run_finishes_the_job(
    index_settings: MakeSettings, tmp_path: Path, running: list[Running], stage: str
) -> None:
    settings = index_settings(ingest_lease_seconds=2)
    kb = write_kb(tmp_path / "kb")
    before = run_ingest(settings)
    texts_before, answer_before, records_before = live_texts(settings), answers(settings, QUESTION), stored(settings)
    _edit(kb)

    run = Running(settings, "--pause-at", stage)
    running.append(run)
    run.wait_stopped(stage)
    run.kill()
    assert pointer(settings).live == before.build
    assert live_texts(settings) == texts_before and answers(settings, QUESTION) == answer_before
    if stage in ("writing", "switching"):  # the killed ingest had written part or all of its build
        assert stored(settings) != records_before
    else:  # nothing is written before the writing stage
        assert stored(settings) == records_before

    after = run_ingest(settings, wait_seconds=30)  # on a server, the dead ingest's lease lapses first
    assert (after.added, after.changed, after.removed) == (1, 1, 1) and after.build == before.build + 1
    texts = live_texts(settings)
    assert any(source.startswith("manual.md") for source in texts)
    assert any("$39 a month" in t for t in texts.values()) and not any("$35 a month" in t for t in texts.values())
    assert "support/hours.txt" not in {p for p, _ in answers(settings, QUESTION)}
    assert_tidy(settings)


def test_a_second_ingest_refuses_while_one_runs_and_waits_for_it(
    index_settings: MakeSettings, tmp_path: Path, running: list[Running]
) -> None:
    """On a Chroma server the lock is the lease in Chroma, which an ingest on another machine sees the
    same way: nothing of it is local to this machine."""
    settings = index_settings(ingest_lease_seconds=2)
    kb = write_kb(tmp_path / "kb")
    run_ingest(settings)
    _long_document(kb)
    first = Running(settings, "--pause-at", "embedding")
    running.append(first)
    first.wait_stopped("embedding")  # holding the lock, part way through

    second = Running(settings, "--wait", "0")
    running.append(second)
    assert second.finish() == 3
    assert f"another ingest (pid {first.process.pid}" in second.stderr and "waited 0 s" in second.stderr

    waiting = Running(settings, "--wait", "120")
    running.append(waiting)
    waiting.wait_for(r"\[ingest\] waiting: another ingest is writing this index")  # it found the lock held
    first.process.send_signal(signal.SIGCONT)
    assert first.finish() == 0 and waiting.finish() == 0, waiting.stderr
    assert waiting.stdout.startswith("Nothing changed")  # it ran after the first had finished the same work


def test_a_killed_ingest_does_not_block_the_next_one(
    index_settings: MakeSettings, tmp_path: Path, running: list[Running]
) -> None:
    settings = index_settings(ingest_lease_seconds=2)
    kb = write_kb(tmp_path / "kb")
    run_ingest(settings)
    _long_document(kb)
    dead = Running(settings, "--pause-at", "parsing")
    running.append(dead)
    dead.wait_stopped("parsing")
    dead.kill()
    # Embedded, the kernel drops the flock at once; on a server the lease lapses after 2 s of silence.
    after = Running(settings, "--json", "--wait", "30")
    running.append(after)
    assert after.finish() == 0, after.stderr
    assert '"added": 1' in after.stdout


def test_a_frozen_ingest_whose_lease_was_taken_over_writes_nothing(
    tmp_path: Path, shared_data_dir: Path, running: list[Running]
) -> None:
    """On a Chroma server (an embedded ingest's flock cannot lapse while its process lives): an ingest
    stopped longer than its lease (a suspended machine) loses it to the next one, and when it wakes it
    stops before writing instead of racing the new holder."""
    host, port = server_address()
    clear_server(host, port)
    kb = write_kb(tmp_path / "kb")
    settings = Settings(
        _env_file=None,
        knowledge_dir=kb,
        data_dir=shared_data_dir,
        index_dir=tmp_path / "index",
        chroma_host=host,
        chroma_port=port,
        ingest_lease_seconds=2,
    )
    run_ingest(settings)
    _long_document(kb)
    frozen = Running(settings, "--pause-at", "embedding")
    running.append(frozen)
    frozen.wait_stopped("embedding")
    taken = run_ingest(settings, wait_seconds=30)  # takes over once the frozen one's beats stop
    records = stored(settings)
    frozen.process.send_signal(signal.SIGCONT)
    assert frozen.finish() == 1
    assert "took over this one's lease" in frozen.stderr
    assert pointer(settings).live == taken.build and stored(settings) == records
