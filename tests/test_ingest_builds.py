"""Builds end to end with the real model and real Chroma: incremental re-runs, atomic switch and
rollback, bad input, locking, and a SIGKILL mid-run. Every test runs on the embedded store and on a
Chroma server (`chroma run`; .ci/run starts one and exports CHROMA_TEST_HOST/CHROMA_TEST_PORT)."""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docx
import pytest
from fpdf import FPDF

from app.knowledge.index import ChunkRecord, embedder_for, open_live_index, open_store
from app.settings import Settings
from ingest.errors import IngestBusy, NoPreviousBuild, NothingToIndex, SourceMissing
from ingest.lock import LOCK_FILE, ingest_lock
from ingest.pipeline import StrictRefused, rollback, run_ingest

MakeSettings = Callable[..., Settings]

PLANS = """# Internet Plans

## Starter 50

Starter 50 costs $35 a month and suits one or two people who browse and stream in HD.

## Swift Gig

Swift Gig gives 1 gigabit downloads for $70 a month, with a free mesh point for large homes.
"""
HOURS = """OPENING HOURS
=============

Our phone lines are open 8am to 8pm, Monday to Saturday. We are closed on public holidays.
"""
CONTACT = (
    "<html><head><title>Contact</title></head><body><h1>Contact us</h1>"
    "<p>Call billing on 555-0100 about a payment you do not recognise.</p></body></html>"
)


@pytest.fixture(params=["embedded", "server"])
def make_settings(request: pytest.FixtureRequest, tmp_path: Path, shared_data_dir: Path) -> MakeSettings:
    server: dict[str, Any] = {}
    if request.param == "server":
        host, port = os.environ.get("CHROMA_TEST_HOST"), os.environ.get("CHROMA_TEST_PORT")
        if not host or not port:
            pytest.skip("server mode needs CHROMA_TEST_HOST/CHROMA_TEST_PORT of a running `chroma run`")
        server = {"chroma_host": host, "chroma_port": int(port)}
        _clear_server(host, int(port))

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "knowledge_dir": tmp_path / "kb",
            "data_dir": shared_data_dir,
            "index_dir": tmp_path / "index",
            **server,
        }
        return Settings(_env_file=None, **(values | overrides))

    return make


def _clear_server(host: str, port: int) -> None:
    import chromadb

    client = chromadb.HttpClient(host=host, port=port)
    for collection in client.list_collections():
        if collection.name.startswith("switchboard_"):
            client.delete_collection(collection.name)


@pytest.fixture
def kb(tmp_path: Path) -> Path:
    root = tmp_path / "kb"
    (root / "support").mkdir(parents=True)
    (root / "plans.md").write_text(PLANS)
    (root / "support" / "hours.txt").write_text(HOURS)
    (root / "support" / "contact.html").write_text(CONTACT)
    return root


def live_chunks(settings: Settings) -> list[ChunkRecord]:
    index = open_live_index(settings)
    assert index is not None
    try:
        return index.all_chunks()
    finally:
        index.close()


def builds(settings: Settings) -> tuple[str | None, str | None, list[str]]:
    store = open_store(settings)
    try:
        pointer = store.pointer()
        return pointer.live, pointer.previous, store.builds()
    finally:
        store.close()


def test_first_build_answers_queries_and_rerun_is_a_noop_without_the_model(
    make_settings: MakeSettings, kb: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings()
    first = run_ingest(settings)
    assert (first.added, first.changed, first.removed, first.unchanged) == (3, 0, 0, 0)
    assert first.chunks == first.embedded > 0 and first.reused == 0 and not first.skipped

    index = open_live_index(settings)
    assert index is not None and index.build_id == first.build and index.count == first.chunks
    try:
        hits = index.query(embedder_for(settings).embed_query("how much is the gigabit plan"), k=2)
    finally:
        index.close()
    # The two short plan sections share one passage under their common heading, their own kept in the text.
    assert hits[0].source == "plans.md" and hits[0].headings == ("Internet Plans",)
    assert "Swift Gig\n\nSwift Gig gives 1 gigabit" in hits[0].text and 0.3 < hits[0].score <= 1.0

    monkeypatch.setattr("ingest.pipeline.embedder_for", _must_not_load_the_model)
    again = run_ingest(settings)
    assert again.noop and again.build == first.build and again.embedded == again.reused == 0
    assert (again.unchanged, again.chunks) == (3, first.chunks)


def _must_not_load_the_model(settings: Settings) -> Any:
    raise AssertionError("an unchanged corpus must not load the embedding model")


def test_edited_file_embeds_only_its_changed_chunks(make_settings: MakeSettings, kb: Path) -> None:
    settings = make_settings()
    first = run_ingest(settings)
    (kb / "plans.md").write_text(PLANS.replace("$35 a month", "$39 a month"))
    second = run_ingest(settings)
    assert (second.added, second.changed, second.removed, second.unchanged) == (0, 1, 0, 2)
    assert second.embedded == 1 and second.reused == second.chunks - 1 and second.build != first.build
    texts = [c.text for c in live_chunks(settings)]
    assert any("$39 a month" in t for t in texts) and not any("$35 a month" in t for t in texts)


def test_deleted_file_is_gone_and_renamed_file_costs_nothing(make_settings: MakeSettings, kb: Path) -> None:
    settings = make_settings()
    run_ingest(settings)
    (kb / "support" / "hours.txt").unlink()
    deleted = run_ingest(settings)
    assert (deleted.removed, deleted.embedded) == (1, 0)
    assert {c.source for c in live_chunks(settings)} == {"plans.md", "support/contact.html"}

    (kb / "archive").mkdir()
    (kb / "plans.md").rename(kb / "archive" / "plans-2026.md")
    renamed = run_ingest(settings)
    assert (renamed.added, renamed.removed, renamed.embedded, renamed.reused) == (1, 1, 0, renamed.chunks)
    assert {c.source for c in live_chunks(settings)} == {"archive/plans-2026.md", "support/contact.html"}


def test_switch_keeps_one_previous_build_and_rollback_swaps(make_settings: MakeSettings, kb: Path) -> None:
    settings = make_settings()
    a = run_ingest(settings).build
    with pytest.raises(NoPreviousBuild):
        rollback(settings)
    (kb / "new.md").write_text("# Outages\n\nCheck the status page first.\n")
    b = run_ingest(settings).build
    assert builds(settings) == (b, a, sorted([a, b]))
    (kb / "newer.md").write_text("# Moving\n\nTell us four weeks before you move.\n")
    c = run_ingest(settings).build
    assert builds(settings) == (c, b, sorted([b, c]))  # a, older than the previous, is gone

    assert rollback(settings).build == b
    assert builds(settings)[:2] == (b, c)
    assert "newer.md" not in {chunk.source for chunk in live_chunks(settings)}
    assert rollback(settings).build == c  # rolling back twice returns to where we were
    assert "newer.md" in {chunk.source for chunk in live_chunks(settings)}


def _write_bad_inputs(kb: Path) -> None:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    pdf.multi_cell(0, 6, "The door code is 4321.")
    pdf.set_encryption(owner_password="owner", user_password="secret")
    (kb / "locked.pdf").write_bytes(bytes(pdf.output()))
    scan = FPDF()
    scan.add_page()
    scan.rect(20, 20, 100, 50, style="F")
    (kb / "scan.pdf").write_bytes(bytes(scan.output()))
    (kb / "broken.pdf").write_bytes(b"%PDF-1.4\n" + random.Random(3).randbytes(2000))
    (kb / "empty.txt").write_bytes(b"")
    (kb / "garbage.txt").write_bytes(random.Random(4).randbytes(4000))
    (kb / "huge.md").write_text("# Big\n\n" + "word " * 4000)
    (kb / "sheet.xlsx").write_bytes(b"PK\x03\x04")
    (kb / ".draft.md").write_text("# Draft\n\nNot yet.\n")
    (kb / ".git").mkdir()
    (kb / ".git" / "config").write_text("[core]\n")
    (kb / "latin1.txt").write_bytes("Café opening hours\n\nThe café in Zürich opens at nine.\n".encode("latin-1"))


def test_bad_inputs_are_skipped_with_a_reason_and_the_rest_ingested(make_settings: MakeSettings, kb: Path) -> None:
    _write_bad_inputs(kb)
    settings = make_settings(ingest_max_file_mb=0.01)
    report = run_ingest(settings)
    reasons = {skip.path: skip.reason for skip in report.skipped}
    assert reasons.keys() == {
        ".git/", ".draft.md", "sheet.xlsx", "empty.txt", "huge.md",
        "broken.pdf", "locked.pdf", "scan.pdf", "garbage.txt",
    }  # fmt: skip
    assert reasons[".git/"] == "hidden directory" and reasons[".draft.md"] == "hidden file"
    assert reasons["sheet.xlsx"] == "unsupported file type (.xlsx)" and reasons["empty.txt"] == "empty file"
    assert reasons["huge.md"].startswith("larger than the 0.01 MB limit (INGEST_MAX_FILE_MB)")
    assert reasons["broken.pdf"].startswith("damaged PDF")
    assert reasons["locked.pdf"] == "encrypted PDF: it needs a password to open"
    assert reasons["scan.pdf"].startswith("no extractable text")
    assert reasons["garbage.txt"] == "binary content, not text"
    sources = {chunk.source: chunk.text for chunk in live_chunks(settings)}
    assert sources.keys() == {"plans.md", "support/hours.txt", "support/contact.html", "latin1.txt"}
    assert sources["latin1.txt"] == "The café in Zürich opens at nine."

    again = run_ingest(settings)  # skipped files are remembered, not parsed again, and still reported
    assert again.noop and sorted(again.skipped, key=str) == sorted(report.skipped, key=str)
    with pytest.raises(StrictRefused) as refused:
        run_ingest(settings, strict=True)
    assert len(refused.value.report.skipped) == 9 and builds(settings)[0] == report.build


def _decompression_bomb_docx(paragraphs: int) -> bytes:
    """A valid .docx of a few tens of KB whose XML inflates to hundreds of thousands of paragraphs."""
    buffer = io.BytesIO()
    docx.Document().save(buffer)
    source, out = zipfile.ZipFile(io.BytesIO(buffer.getvalue())), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bomb:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "word/document.xml":
                head, tail = data.split(b"<w:body>", 1)
                body = b"<w:p><w:r><w:t>The router resets itself at night.</w:t></w:r></w:p>" * paragraphs
                data = head + b"<w:body>" + body + tail
            bomb.writestr(item, data)
    return out.getvalue()


def test_a_file_that_hangs_its_parser_is_skipped_and_the_rest_ingested(make_settings: MakeSettings, kb: Path) -> None:
    (kb / "manual.docx").write_bytes(_decompression_bomb_docx(300_000))  # minutes of parsing
    settings = make_settings(ingest_parse_timeout_s=1)
    report = run_ingest(settings)
    assert [(s.path, s.reason) for s in report.skipped] == [
        ("manual.docx", "took longer than 1 s to parse (INGEST_PARSE_TIMEOUT_S)")
    ]
    assert {c.source for c in live_chunks(settings)} == {"plans.md", "support/hours.txt", "support/contact.html"}
    again = run_ingest(settings)  # remembered by content: not parsed (and waited for) again
    assert again.noop and [s.path for s in again.skipped] == ["manual.docx"]


def test_strict_refuses_before_writing_a_build(make_settings: MakeSettings, kb: Path) -> None:
    settings = make_settings()
    first = run_ingest(settings)
    (kb / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really")
    (kb / "new.md").write_text("# New\n\nSomething new.\n")
    with pytest.raises(StrictRefused):
        run_ingest(settings, strict=True)
    assert builds(settings) == (first.build, None, [first.build])


def test_missing_source_and_empty_corpus_leave_the_live_build(make_settings: MakeSettings, kb: Path) -> None:
    settings = make_settings()
    live = run_ingest(settings).build
    with pytest.raises(SourceMissing, match="does not exist"):
        run_ingest(settings, kb / "nope")
    only_bad = kb.parent / "only-bad"
    only_bad.mkdir()
    (only_bad / "empty.md").write_text("")
    (only_bad / "blank.txt").write_text("   \n\n")
    with pytest.raises(NothingToIndex):
        run_ingest(settings, only_bad)
    assert builds(settings) == (live, None, [live])


def test_second_ingest_refuses_or_waits_while_the_lock_is_held(make_settings: MakeSettings, kb: Path) -> None:
    settings = make_settings()
    with ingest_lock(settings.index_dir, 0), pytest.raises(IngestBusy, match=r"another ingest \(pid \d+\)"):
        run_ingest(settings, wait_seconds=0.2)

    held = threading.Event()

    def hold_briefly() -> None:
        with ingest_lock(settings.index_dir, 0):
            held.set()
            time.sleep(1.0)

    holder = threading.Thread(target=hold_briefly)
    holder.start()
    held.wait(5)
    started = time.monotonic()
    report = run_ingest(settings, wait_seconds=30)
    holder.join()
    assert time.monotonic() - started >= 0.8 and report.build is not None


# --- as a command, in other processes -------------------------------------------------------


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHROMA_", "INDEX_", "KNOWLEDGE_", "DATA_"))}
    env |= {
        "KNOWLEDGE_DIR": str(settings.knowledge_dir),
        "DATA_DIR": str(settings.data_dir),
        "INDEX_DIR": str(settings.index_dir),
    }
    if settings.chroma_host:
        env |= {"CHROMA_HOST": settings.chroma_host, "CHROMA_PORT": str(settings.chroma_port)}
    return env


def _ingest_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args],
        env=_env(settings),
        cwd=settings.knowledge_dir.parent,  # no .env of the developer's is read
        capture_output=True,
        text=True,
        timeout=120,
    )


class _Running:
    """`python -m ingest` in the background, its stderr (the progress bar) collected as it comes."""

    def __init__(self, settings: Settings) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ingest"],
            env=_env(settings),
            cwd=settings.knowledge_dir.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        # os.read returns whatever has arrived; a buffered read would sit on a short progress line.
        while chunk := os.read(self.process.stderr.fileno(), 4096):
            self.stderr += chunk.decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.stderr):
            assert self.process.poll() is None, f"ingest ended early: {self.stderr[-2000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} in: {self.stderr[-2000:]}"
            time.sleep(0.05)

    def finish(self) -> int:
        code = self.process.wait(timeout=120)
        self._reader.join(5)
        return code


@pytest.fixture
def running() -> Iterator[list[_Running]]:
    started: list[_Running] = []
    yield started
    for run in started:
        if run.process.poll() is None:
            run.process.kill()
            run.finish()


def _long_document(kb: Path, sections: int = 80) -> None:
    rng = random.Random(5)
    words = "router bill outage install move refund phone fibre mesh signal account payment".split()
    body = [f"# Field Manual\n\n## Procedure {i}\n\n" + " ".join(rng.choices(words, k=60)) for i in range(sections)]
    (kb / "manual.md").write_text("\n\n".join(body))


def test_a_second_ingest_refuses_and_a_sigkill_mid_write_leaves_the_live_build(
    make_settings: MakeSettings, kb: Path, running: list[_Running]
) -> None:
    settings = make_settings()
    before = run_ingest(settings)
    live_before = sorted(chunk.id for chunk in live_chunks(settings))
    _long_document(kb)
    run = _Running(settings)
    running.append(run)
    run.wait_for("reading")  # it holds the lock from before it reads a file
    assert (settings.index_dir / LOCK_FILE).read_text() == str(run.process.pid)
    with pytest.raises(IngestBusy, match=f"another ingest \\(pid {run.process.pid}\\)"):
        run_ingest(settings, wait_seconds=0)

    run.wait_for(r"embedding:.*?\| *[1-9]\d*/\d+ \[")  # at least one batch is in the new build
    run.process.send_signal(signal.SIGKILL)
    run.finish()
    live, previous, present = builds(settings)
    assert (live, previous) == (before.build, None) and len(present) == 2  # the half-written build
    assert sorted(chunk.id for chunk in live_chunks(settings)) == live_before

    after = run_ingest(settings, wait_seconds=0)  # the kernel dropped the dead ingest's lock
    assert after.added == 1 and after.reused == before.chunks
    assert builds(settings) == (after.build, before.build, sorted([before.build, after.build]))


def test_command_line_report_exit_codes_and_rollback(make_settings: MakeSettings, kb: Path) -> None:
    settings = make_settings()
    first = run_ingest(settings)
    (kb / "more.md").write_text("# More\n\nOne more page.\n")
    second = run_ingest(settings)

    noop = _ingest_cli(settings, "--json")
    assert noop.returncode == 0, noop.stderr
    report = json.loads(noop.stdout)
    assert {"added", "changed", "removed", "unchanged", "skipped", "chunks", "embedded", "reused", "seconds",
            "build"} <= report.keys()  # fmt: skip
    assert report["build"] == second.build and report["embedded"] == 0 and noop.stderr == ""

    (kb / ".notes.md").write_text("# Notes\n")
    strict = _ingest_cli(settings, "--json", "--strict")
    assert strict.returncode == 1 and json.loads(strict.stdout)["skipped"] == [
        {"path": ".notes.md", "reason": "hidden file"}
    ]
    missing = _ingest_cli(settings, "--source", str(kb / "nope"))
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0 and "does not exist" in missing.stderr

    back = _ingest_cli(settings, "--rollback", "--json")
    assert back.returncode == 0 and json.loads(back.stdout)["build"] == first.build
    assert builds(settings)[:2] == (first.build, second.build)
    assert "--strict" in _ingest_cli(settings, "--help").stdout
