"""Builds end to end with the real model and real Chroma: incremental re-runs that write only what
changed, atomic switch and rollback, bad input, and locking. Every test runs on the embedded store
and on a Chroma server (`chroma run`; .ci/run starts one and exports CHROMA_TEST_HOST/CHROMA_TEST_PORT)."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docx
import pytest
from fpdf import FPDF

import ingest.pipeline
import ingest.scan
from app.knowledge.store import StoreBusy, build_state, store_lock
from app.settings import Settings
from ingest.errors import IngestBusy, NoPreviousBuild, NothingToIndex, SourceMissing
from ingest.lock import ingest_lock
from ingest.pipeline import StrictRefused, rollback, run_ingest
from tests.support.index import (
    PLANS,
    answers,
    assert_tidy,
    build_records,
    clear_server,
    ingest_cli,
    live_texts,
    pointer,
    retriever,
    stored,
    write_kb,
)

MakeSettings = Callable[..., Settings]


@pytest.fixture
def kb(tmp_path: Path) -> Path:
    return write_kb(tmp_path / "kb")


def sources(settings: Settings) -> set[str]:
    return {record.source for record in build_records(settings)}


def test_first_build_answers_queries_and_rerun_is_a_noop_without_the_model(
    index_settings: MakeSettings, kb: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = index_settings()
    first = run_ingest(settings)
    assert (first.added, first.changed, first.removed, first.unchanged) == (3, 0, 0, 0)
    assert first.chunks == first.embedded > 0 and first.reused == 0 and not first.skipped
    assert pointer(settings).live == first.build and len(build_records(settings)) == first.chunks

    with retriever(settings) as found:
        best = found.retrieve_sync("how much is the gigabit plan").passages[0]
    # The two short plan sections share one passage under their common heading, their own kept in the text.
    assert best.source == "plans.md" and best.headings == ("Internet Plans",)
    assert "Swift Gig\n\nSwift Gig gives 1 gigabit" in best.text and 0.3 < best.similarity <= 1.0

    monkeypatch.setattr("ingest.pipeline.embedder_for", _must_not_load_the_model)
    again = run_ingest(settings)
    assert again.noop and again.build == first.build and again.embedded == again.reused == 0
    assert (again.unchanged, again.chunks) == (3, first.chunks)


def _must_not_load_the_model(settings: Settings) -> Any:
    raise AssertionError("an unchanged corpus must not load the embedding model")


def test_edited_file_writes_only_its_changed_chunks(index_settings: MakeSettings, kb: Path) -> None:
    settings = index_settings()
    first = run_ingest(settings)
    records_before = stored(settings)
    (kb / "plans.md").write_text(PLANS.replace("$35 a month", "$39 a month"))
    second = run_ingest(settings)
    assert (second.added, second.changed, second.removed, second.unchanged) == (0, 1, 0, 2)
    assert second.embedded == 1 and second.reused == second.chunks - 1 and second.build == first.build + 1
    records_after = stored(settings)
    new = records_after.keys() - records_before.keys()
    ended = {r for r, run in records_after.items() if r in records_before and run != records_before[r]}
    assert len(new) == 1 and len(ended) == 1  # one record written, one run ended: nothing copied
    texts = list(live_texts(settings).values())
    assert any("$39 a month" in t for t in texts) and not any("$35 a month" in t for t in texts)


def test_deleted_file_is_gone_and_renamed_file_costs_nothing(index_settings: MakeSettings, kb: Path) -> None:
    settings = index_settings()
    run_ingest(settings)
    (kb / "support" / "hours.txt").unlink()
    deleted = run_ingest(settings)
    assert (deleted.removed, deleted.embedded) == (1, 0)
    assert sources(settings) == {"plans.md", "support/contact.html"}

    (kb / "archive").mkdir()
    (kb / "plans.md").rename(kb / "archive" / "plans-2026.md")
    renamed = run_ingest(settings)
    assert (renamed.added, renamed.removed, renamed.embedded, renamed.reused) == (1, 1, 0, renamed.chunks)
    assert sources(settings) == {"archive/plans-2026.md", "support/contact.html"}


def test_switch_keeps_one_previous_build_and_rollback_swaps(index_settings: MakeSettings, kb: Path) -> None:
    settings = index_settings()
    a = run_ingest(settings).build
    with pytest.raises(NoPreviousBuild):
        rollback(settings)
    (kb / "new.md").write_text("# Outages\n\nCheck the status page first.\n")
    b = run_ingest(settings).build
    assert (pointer(settings).live, pointer(settings).previous) == (b, a)
    (kb / "newer.md").write_text("# Moving\n\nTell us four weeks before you move.\n")
    c = run_ingest(settings).build
    assert (pointer(settings).live, pointer(settings).previous) == (c, b)
    assert_tidy(settings)  # a, older than the previous, is gone: its manifest and the records only it had

    assert rollback(settings).build == b
    assert (pointer(settings).live, pointer(settings).previous) == (b, c)
    assert "newer.md" not in sources(settings)
    assert rollback(settings).build == c  # rolling back twice returns to where we were
    assert "newer.md" in sources(settings)


def test_rollback_after_an_edit_and_a_removal_brings_back_the_old_passages(
    index_settings: MakeSettings, kb: Path
) -> None:
    settings = index_settings()
    run_ingest(settings)
    assert ("support/hours.txt", HOURS_TEXT) in answers(settings, "when are your phone lines open")
    (kb / "plans.md").write_text(PLANS.replace("$35 a month", "$39 a month"))
    (kb / "support" / "hours.txt").unlink()
    run_ingest(settings)
    after = answers(settings, "when are your phone lines open")
    assert "support/hours.txt" not in {source for source, _ in after}  # gone at once after the switch
    assert any("$39 a month" in text for _, text in answers(settings, "how much is Starter 50"))

    rollback(settings)
    assert ("support/hours.txt", HOURS_TEXT) in answers(settings, "when are your phone lines open")
    plans = [text for source, text in answers(settings, "how much is Starter 50") if source == "plans.md"]
    assert any("$35 a month" in text for text in plans) and not any("$39" in text for text in plans)


HOURS_TEXT = "Our phone lines are open 8am to 8pm, Monday to Saturday. We are closed on public holidays."


def test_an_ingest_after_a_rollback_builds_on_what_is_live(index_settings: MakeSettings, kb: Path) -> None:
    settings = index_settings()
    first = run_ingest(settings)
    (kb / "plans.md").write_text(PLANS.replace("$35 a month", "$39 a month"))
    run_ingest(settings)
    rollback(settings)  # back to $35; the $39 build is the previous
    (kb / "plans.md").write_text(PLANS)  # the documents agree with what is live again: nothing to do
    assert run_ingest(settings).noop
    (kb / "extra.md").write_text("# Gift cards\n\nGift cards never expire.\n")
    third = run_ingest(settings)
    assert (third.added, third.changed, third.removed) == (1, 0, 0)  # compared with what was live
    texts = list(live_texts(settings).values())
    assert any("$35 a month" in t for t in texts) and not any("$39" in t for t in texts)
    assert any("Gift cards never expire" in t for t in texts)
    assert len(texts) == first.chunks + 1 and third.embedded == 1
    assert_tidy(settings)  # the $39 build is neither live nor previous now: its records are gone
    assert rollback(settings).build == first.build  # the previous is what was live before
    assert not any("Gift cards" in t for t in live_texts(settings).values())


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


def test_bad_inputs_are_skipped_with_a_reason_and_the_rest_ingested(index_settings: MakeSettings, kb: Path) -> None:
    _write_bad_inputs(kb)
    settings = index_settings(ingest_max_file_mb=0.01)
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
    texts = {record.source: record.text for record in build_records(settings)}
    assert texts.keys() == {"plans.md", "support/hours.txt", "support/contact.html", "latin1.txt"}
    assert texts["latin1.txt"] == "The café in Zürich opens at nine."

    again = run_ingest(settings)  # skipped files are remembered, not parsed again, and still reported
    assert again.noop and sorted(again.skipped, key=str) == sorted(report.skipped, key=str)
    with pytest.raises(StrictRefused) as refused:
        run_ingest(settings, strict=True)
    assert len(refused.value.report.skipped) == 9 and pointer(settings).live == report.build

    (kb / "extra.md").write_text("# Extra\n\nOne more page.\n")
    carried = run_ingest(settings)  # unchanged skipped files keep their reason without a re-parse
    assert {s.path for s in carried.skipped} == reasons.keys()


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


def test_a_file_that_hangs_its_parser_is_skipped_and_the_rest_ingested(index_settings: MakeSettings, kb: Path) -> None:
    (kb / "manual.docx").write_bytes(_decompression_bomb_docx(300_000))  # minutes of parsing
    settings = index_settings(ingest_parse_timeout_s=1)
    report = run_ingest(settings)
    assert [(s.path, s.reason) for s in report.skipped] == [
        ("manual.docx", "took longer than 1 s to parse (INGEST_PARSE_TIMEOUT_S)")
    ]
    assert sources(settings) == {"plans.md", "support/hours.txt", "support/contact.html"}
    again = run_ingest(settings)  # remembered by content: not parsed (and waited for) again
    assert again.noop and [s.path for s in again.skipped] == ["manual.docx"]


def test_strict_refuses_before_writing_a_build(index_settings: MakeSettings, kb: Path) -> None:
    settings = index_settings()
    first = run_ingest(settings)
    before = stored(settings)
    (kb / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really")
    (kb / "new.md").write_text("# New\n\nSomething new.\n")
    with pytest.raises(StrictRefused):
        run_ingest(settings, strict=True)
    assert pointer(settings).live == first.build and stored(settings) == before


def test_missing_source_and_empty_corpus_leave_the_live_build(index_settings: MakeSettings, kb: Path) -> None:
    settings = index_settings()
    live = run_ingest(settings).build
    before = stored(settings)
    with pytest.raises(SourceMissing, match="does not exist"):
        run_ingest(settings, kb / "nope")
    only_bad = kb.parent / "only-bad"
    only_bad.mkdir()
    (only_bad / "empty.md").write_text("")
    (only_bad / "blank.txt").write_text("   \n\n")
    with pytest.raises(NothingToIndex):
        run_ingest(settings, only_bad)
    assert pointer(settings).live == live and stored(settings) == before


def test_second_ingest_refuses_or_waits_while_the_lock_is_held(
    index_settings: MakeSettings, kb: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Waiting for a lock that is released: `test_ingest_crash`, with an ingest in another process."""
    settings = index_settings(ingest_lease_seconds=2)
    with ingest_lock(settings, 0), pytest.raises(IngestBusy, match=r"another ingest \(pid \d+"):
        run_ingest(settings, wait_seconds=0.2, progress=True)
    assert "[ingest] waiting: another ingest is writing this index; up to 0.2 s" in capfd.readouterr().err


def test_command_line_report_exit_codes_and_rollback(index_settings: MakeSettings, kb: Path) -> None:
    settings = index_settings()
    first = run_ingest(settings)
    (kb / "more.md").write_text("# More\n\nOne more page.\n")
    second = run_ingest(settings)

    noop = ingest_cli(settings, "--json")
    assert noop.returncode == 0, noop.stderr
    report = json.loads(noop.stdout)
    assert {"added", "changed", "removed", "unchanged", "skipped", "chunks", "embedded", "reused", "seconds",
            "build"} <= report.keys()  # fmt: skip
    assert report["build"] == second.build and report["embedded"] == 0 and noop.stderr == ""

    (kb / ".notes.md").write_text("# Notes\n")
    strict = ingest_cli(settings, "--json", "--strict")
    assert strict.returncode == 1 and json.loads(strict.stdout)["skipped"] == [
        {"path": ".notes.md", "reason": "hidden file"}
    ]
    missing = ingest_cli(settings, "--source", str(kb / "nope"))
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0 and "does not exist" in missing.stderr

    back = ingest_cli(settings, "--rollback", "--json")
    assert back.returncode == 0 and json.loads(back.stdout)["build"] == first.build
    assert (pointer(settings).live, pointer(settings).previous) == (first.build, second.build)
    assert "--strict" in ingest_cli(settings, "--help").stdout


def test_an_index_from_before_shared_builds_is_rebuilt_and_removed(tmp_path: Path, shared_data_dir: Path) -> None:
    """Embedded indexes made by earlier versions (one store per build under builds/, live.json) are
    replaced by a full build on the first run; the old files go only once the new build is live."""
    kb = write_kb(tmp_path / "kb")
    index_dir = tmp_path / "index"
    (index_dir / "builds" / "20260101T000000Z-abc123").mkdir(parents=True)
    (index_dir / "builds" / "20260101T000000Z-abc123" / "chroma.sqlite3").write_bytes(b"old store")
    (index_dir / "live.json").write_text('{"live": "20260101T000000Z-abc123"}')
    settings = Settings(_env_file=None, knowledge_dir=kb, data_dir=shared_data_dir, index_dir=index_dir)
    assert build_state(settings).pointer().live is None  # the server sees no index it can read, and builds one
    report = run_ingest(settings)
    assert report.added == 3 and report.embedded == report.chunks
    assert not (index_dir / "builds").exists() and not (index_dir / "live.json").exists()
    assert sources(settings) == {"plans.md", "support/hours.txt", "support/contact.html"}
    shutil.rmtree(index_dir)


def test_many_new_texts_are_embedded_with_the_store_free_for_a_starting_server(
    tmp_path: Path, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedded: the ingest holds store.lock exclusively only to read and write the store. A few new
    texts are embedded in that one session; many (minutes of embedding) with the store closed, so a
    server starting meanwhile can open it."""
    kb = write_kb(tmp_path / "kb")
    settings = Settings(_env_file=None, knowledge_dir=kb, data_dir=shared_data_dir, index_dir=tmp_path / "index")
    free_while_embedding: list[bool] = []
    load_model = ingest.pipeline.embedder_for

    def probed(settings: Settings) -> Any:
        try:
            with store_lock(settings.index_dir, exclusive=False, wait_seconds=0):
                free_while_embedding.append(True)
        except StoreBusy:
            free_while_embedding.append(False)
        return load_model(settings)

    monkeypatch.setattr("ingest.pipeline.embedder_for", probed)
    first = run_ingest(settings)
    monkeypatch.setattr("ingest.pipeline._EMBED_IN_SESSION", 0)  # one new text is "many"
    (kb / "plans.md").write_text(PLANS.replace("$35 a month", "$39 a month"))
    second = run_ingest(settings)
    assert free_while_embedding == [False, True]
    assert second.embedded == 1 and second.build == first.build + 1
    assert any("$39 a month" in t for t in live_texts(settings).values())
    assert_tidy(settings)


def _pages(root: Path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    words = "router bill outage install move refund phone fibre mesh signal account payment modem".split()
    root.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        sections = [f"## Part {s}\n\n" + " ".join(rng.choices(words, k=70)) for s in range(4)]
        (root / f"page-{n}.md").write_text(f"# Page {n}\n\n" + "\n\n".join(sections))


def test_an_edit_costs_the_same_in_a_small_and_a_five_times_larger_index(
    index_settings: MakeSettings, tmp_path: Path
) -> None:
    """The same one-file edit embeds the same texts and writes the same records, whatever else is
    indexed (counted in the store)."""
    costs = []
    for size in (1, 5):
        kb = tmp_path / f"kb-{size}"
        for folder in range(size):
            _pages(kb / f"team-{folder}", 8, seed=folder)
        settings = index_settings(knowledge_dir=kb, index_dir=tmp_path / f"index-{size}")
        if settings.chroma_host:
            clear_server(settings.chroma_host, settings.chroma_port)
        first = run_ingest(settings)
        before = stored(settings)
        page = kb / "team-0" / "page-3.md"
        page.write_text(page.read_text().replace("## Part 2", "## Part 2 (updated)") + "\nA new closing line.\n")
        edit = run_ingest(settings)
        after = stored(settings)
        new = len(after.keys() - before.keys())
        ended = sum(1 for record, run in before.items() if after.get(record) != run)
        costs.append((first.chunks, edit.embedded, new, ended))
    (small, *small_cost), (large, *large_cost) = costs
    assert large >= 5 * small - 5 and small_cost == large_cost and small_cost[0] > 0


def test_unchanged_files_are_not_read_again_but_every_rewrite_is_seen(
    tmp_path: Path, shared_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose stat is the one the last build recorded is not read again; a rewrite that keeps
    the size and puts the old times back is still seen (its change time moves), and so is a file
    written moments before the scan that recorded it (its stat is not trusted)."""
    kb = write_kb(tmp_path / "kb")
    settings = Settings(_env_file=None, knowledge_dir=kb, data_dir=shared_data_dir, index_dir=tmp_path / "index")
    read: list[str] = []
    hash_file = ingest.scan.file_sha256

    def counted(path: Path | str) -> str:
        read.append(Path(path).name)
        return hash_file(path)

    monkeypatch.setattr("ingest.scan.file_sha256", counted)
    run_ingest(settings)
    read.clear()
    assert run_ingest(settings).noop and sorted(read) == ["contact.html", "hours.txt", "plans.md"]  # just written

    monkeypatch.setattr("app.knowledge.manifest.STILL_NS", 0)  # as if the files had been still long enough
    (kb / "extra.md").write_text("# Extra\n\nOne more page.\n")
    run_ingest(settings)  # records stats a scan may trust
    read.clear()
    assert run_ingest(settings).noop and read == []

    page = kb / "plans.md"
    before = page.stat()
    page.write_text(PLANS.replace("$35 a month", "$36 a month"))  # same size
    os.utime(page, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `cp -p` or a restore would leave it
    assert page.stat().st_size == before.st_size and page.stat().st_mtime_ns == before.st_mtime_ns
    edited = run_ingest(settings)
    assert edited.changed == 1 and read == ["plans.md"]
    assert any("$36 a month" in t for t in live_texts(settings).values())
