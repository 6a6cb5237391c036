"""Loaders and chunker, in-process on documents generated here: structure kept, bad input refused with
a reason, legacy encodings decoded, and no chunk ever longer than the model's window."""

from __future__ import annotations

import io
import itertools
import random
from pathlib import Path

import docx
import pytest
from fpdf import FPDF

from app.knowledge.embedding import resolve_model
from app.knowledge.records import embedded_text
from ingest.chunker import Chunker, Passage
from ingest.document import Section, Unreadable
from ingest.loaders import load_document
from ingest.prepare import NO_TEXT, prepare_file
from tests.support.paths import KNOWLEDGE

SPEC = resolve_model("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker(SPEC.tokenizer_file, SPEC.window)


def make_pdf(sections: list[tuple[str, str]], title: str = "Router Guide", password: str | None = None) -> bytes:
    pdf = FPDF()
    pdf.set_title(title)
    pdf.add_page()
    pdf.set_font("Helvetica", size=20)
    pdf.multi_cell(0, 10, title, new_x="LMARGIN", new_y="NEXT")
    for heading, body in sections:
        pdf.set_font("Helvetica", size=15)
        pdf.multi_cell(0, 8, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=10.5)
        pdf.multi_cell(0, 5, body, new_x="LMARGIN", new_y="NEXT")
    if password:
        pdf.set_encryption(owner_password="owner", user_password=password)
    return bytes(pdf.output())


def make_docx() -> bytes:
    word = docx.Document()
    word.add_heading("Cancellation Policy", 0)
    word.add_heading("Refunds", 1)
    word.add_paragraph("Refunds are paid to the original card within 10 business days.")
    table = word.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Plan", "Fee"
    table.cell(1, 0).text, table.cell(1, 1).text = "Swift Gig", "$49"
    word.add_heading("Early termination", 2)
    word.add_paragraph("The early termination charge is 50% of the remaining months.", style="List Bullet")
    buffer = io.BytesIO()
    word.save(buffer)
    return buffer.getvalue()


def test_markdown_keeps_heading_trail_lists_and_tables() -> None:
    doc = load_document(
        ".md",
        b"---\ntitle: Paying your bill\n---\n"
        b"# Payments\n\nIntro **bold** and [a link](http://x).\n\n## Autopay\n\n### Cards\n\n"
        b"- Visa\n- Mastercard\n\n| Method | Fee |\n|---|---|\n| Card | $0 |\n",
    )
    trails = {section.headings: section.text for section in doc.sections}
    assert trails[("Paying your bill", "Payments")] == "Intro bold and a link."
    assert trails[("Paying your bill", "Payments", "Autopay", "Cards")] == (
        "- Visa\n- Mastercard\n\nMethod | Fee\nCard | $0"
    )


def test_text_headings_from_underlines_and_capitals() -> None:
    doc = load_document(
        ".txt",
        b"STATIC IP ADD-ON\n================\n\nMost customers never need one.\n\n"
        b"PRICES\n------\n\n  Residential ........ $12 per month\n\nWHO CAN GET ONE\nBusiness customers.\n",
    )
    assert doc.title == "STATIC IP ADD-ON"
    assert [s.headings for s in doc.sections] == [
        ("STATIC IP ADD-ON",),
        ("STATIC IP ADD-ON", "PRICES"),
        ("STATIC IP ADD-ON", "WHO CAN GET ONE"),
    ]
    assert doc.sections[1].text == "Residential ... $12 per month"


def test_html_headings_tables_and_no_scripts() -> None:
    doc = load_document(
        ".html",
        b"<html><head><title>Contact | Kestrel</title><script>var x=1;</script></head><body>"
        b"<nav><a href='/'>Home</a></nav><h1>Contact us</h1><p>Call  us\n any day.</p>"
        b"<h2>Hours</h2><table><tr><th>Team</th><th>Hours</th></tr><tr><td>Billing</td><td>8-8</td></tr></table>"
        b"<ul><li>Closed on holidays</li></ul></body></html>",
    )
    assert doc.title == "Contact us"
    assert doc.sections[0] == Section(("Contact us",), "Call us any day.")
    assert doc.sections[1].headings == ("Contact us", "Hours")
    assert doc.sections[1].text == "Team | Hours\nBilling | 8-8\n- Closed on holidays"
    assert all("var x" not in s.text and "Home" not in s.text for s in doc.sections)


def test_pdf_headings_found_by_type_size() -> None:
    doc = load_document(
        ".pdf",
        make_pdf([("Restarting your router", "Unplug it for 30 seconds."), ("Lights", "Green is good.")]),
    )
    assert doc.title == "Router Guide"
    assert [s.headings for s in doc.sections] == [
        ("Router Guide", "Restarting your router"),
        ("Router Guide", "Lights"),
    ]
    assert doc.sections[0].text == "Unplug it for 30 seconds."


def test_docx_styles_and_tables() -> None:
    doc = load_document(".docx", make_docx())
    assert doc.title == "Cancellation Policy"
    assert doc.sections[0].headings == ("Cancellation Policy", "Refunds")
    assert "Plan | Fee\nSwift Gig | $49" in doc.sections[0].text
    assert doc.sections[1].headings == ("Cancellation Policy", "Refunds", "Early termination")
    assert doc.sections[1].text.startswith("- The early termination charge")


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252"])
def test_legacy_encodings_are_decoded(encoding: str) -> None:
    text = (
        "Café Crème opening hours\n\nOur café in Saint-Étienne is open on Sundays. "
        "The naïve résumé of our façade: déjà vu, señor, garçon, Zürich, smörgåsbord.\n"
    )
    if encoding == "cp1252":
        text += "Prices “include” VAT – always… €5 per visit.\n"
    doc = load_document(".txt", text.encode(encoding))
    assert doc.title == "Café Crème opening hours"
    body = doc.sections[0].text
    assert "Saint-Étienne" in body and "smörgåsbord" in body
    if encoding == "cp1252":
        assert "“include” VAT – always… €5" in body


@pytest.mark.parametrize(
    ("suffix", "data", "reason"),
    [
        (".pdf", b"%PDF-1.4\n" + random.Random(1).randbytes(3000), "damaged PDF"),
        (".pdf", make_pdf([("Secret", "Only with a password.")], password="user"), "encrypted PDF"),
        (".txt", random.Random(2).randbytes(4096), "binary content, not text"),
        (".txt", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "binary content, not text"),
        (".docx", b"PK\x03\x04 not really a zip", "not a Word .docx file"),
    ],
    ids=["corrupt-pdf", "encrypted-pdf", "random-bytes-txt", "png-named-txt", "corrupt-docx"],
)
def test_bad_input_is_refused_with_a_reason(suffix: str, data: bytes, reason: str) -> None:
    with pytest.raises(Unreadable, match=reason):
        load_document(suffix, data)


def test_pdf_with_no_text_gives_no_chunks(tmp_path: Path) -> None:
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 50, style="F")  # a "scan": drawing, no text layer
    path = tmp_path / "scan.pdf"
    path.write_bytes(bytes(pdf.output()))
    prepared = prepare_file(path, "scan.pdf", SPEC.tokenizer_file, SPEC.window)
    assert prepared.passages == () and prepared.skipped == NO_TEXT


def test_whitespace_only_text_gives_no_chunks(tmp_path: Path) -> None:
    path = tmp_path / "blank.md"
    path.write_text("\n\n   \n\t\n")
    assert prepare_file(path, "blank.md", SPEC.tokenizer_file, SPEC.window).skipped == NO_TEXT


def _assert_within_window(chunker: Chunker, passages: list[Passage]) -> None:
    from tokenizers import Tokenizer

    # Measured with the model's own tokenizer, special tokens included, independently of the chunker.
    tokenizer = Tokenizer.from_file(str(SPEC.tokenizer_file))
    tokenizer.no_truncation()
    for passage in passages:
        length = len(tokenizer.encode(embedded_text(passage.headings, passage.text)).ids)
        assert length <= SPEC.window, (length, passage.headings, passage.text[:80])


def test_sample_knowledge_base_chunks_fit_the_window(chunker: Chunker) -> None:
    files = [p for p in KNOWLEDGE.rglob("*") if p.is_file() and not p.name.startswith(".")]
    if not files:
        pytest.skip("knowledge/ has no documents yet")
    passages = [p for f in files for p in chunker.split(load_document(f.suffix, f.read_bytes()))]
    assert passages
    _assert_within_window(chunker, passages)


def _generated_markdown(rng: random.Random) -> str:
    words = ["router", "Wi-Fi", "bill", "déjà", "東京", "https://kestrel.example/a/very/long/path?x=1", "🙂", "7"]
    parts = []
    for _ in range(rng.randint(1, 6)):
        parts.append("#" * rng.randint(1, 4) + " " + " ".join(rng.choices(words, k=rng.randint(1, 60))))
        for _paragraph in range(rng.randint(0, 8)):
            kind = rng.random()
            if kind < 0.1:
                parts.append("x" * rng.randint(100, 3000))  # one endless "word"
            elif kind < 0.2:
                parts.append("\n".join("- " + " ".join(rng.choices(words, k=5)) for _ in range(30)))
            else:
                sentences = (" ".join(rng.choices(words, k=rng.randint(3, 40))) + "." for _ in range(20))
                parts.append(" ".join(sentences))
    return "\n\n".join(parts)


@pytest.mark.parametrize("seed", range(6))
def test_generated_text_chunks_fit_the_window_and_keep_every_word(chunker: Chunker, seed: int) -> None:
    text = _generated_markdown(random.Random(seed))
    document = load_document(".md", text.encode())
    passages = chunker.split(document)
    _assert_within_window(chunker, passages)
    covered = {word for p in passages for word in p.text.split()}
    for section in document.sections:
        assert set(section.text.split()) <= covered


def test_short_neighbouring_sections_share_a_passage_under_their_common_headings(chunker: Chunker) -> None:
    long_text = " ".join(f"Step {i} of resetting the router to factory settings." for i in range(40))
    document = load_document(
        ".md",
        f"# Router\n\n## Lights\n\n### Red\n\nNo signal.\n\n### Green\n\nAll good.\n\n## Reset\n\n{long_text}".encode(),
    )
    passages = chunker.split(document)
    assert passages[0] == Passage(("Router", "Lights"), "Red\n\nNo signal.\n\nGreen\n\nAll good.")
    assert {p.headings for p in passages[1:]} == {("Router", "Reset")}


def test_long_section_is_split_with_overlap_near_the_target(chunker: Chunker) -> None:
    sentences = [f"Sentence number {i} explains one more detail about the router lights." for i in range(120)]
    document = load_document(".md", ("# Guide\n\n## Lights\n\n" + " ".join(sentences)).encode())
    passages = chunker.split(document)
    lengths = [chunker.embedded_length(p) for p in passages]
    assert len(passages) > 3
    assert max(lengths) <= chunker.target and min(lengths[:-1]) >= chunker.target * 0.6
    for first, second in itertools.pairwise(passages):
        assert first.text.split(".")[-2] in second.text  # the last sentence of one opens the next
    assert all(p.headings == ("Guide", "Lights") for p in passages)
