"""Markdown through markdown-it-py (CommonMark plus tables): headings, prose, lists, tables, code."""

from __future__ import annotations

import re

from markdown_it import MarkdownIt
from markdown_it.token import Token

from ingest.decode import decode_text
from ingest.document import Document, DocumentBuilder

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)---[ \t]*(?:\n|\Z)", re.DOTALL)
_FRONT_MATTER_TITLE = re.compile(r"^title:\s*[\"']?(.+?)[\"']?\s*$", re.MULTILINE)
_TAG = re.compile(r"<[^>]+>")
_parser = MarkdownIt("commonmark").enable("table")


def load_markdown(data: bytes) -> Document:
    text = decode_text(data)
    title = None
    if front := _FRONT_MATTER.match(text):
        text = text[front.end() :]
        if found := _FRONT_MATTER_TITLE.search(front.group(1)):
            title = found.group(1)
    builder = DocumentBuilder(title=title)
    tokens = _parser.parse(text)
    list_depth = 0
    row: list[str] | None = None
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            builder.heading(int(token.tag[1]), _inline_text(tokens[i + 1]))
        elif token.type in ("bullet_list_open", "ordered_list_open"):
            list_depth += 1
        elif token.type in ("bullet_list_close", "ordered_list_close"):
            list_depth -= 1
            if not list_depth:
                builder.end_block()
        elif token.type == "tr_open":
            row = []
        elif token.type == "tr_close" and row is not None:
            builder.line(" | ".join(cell for cell in row if cell))
            row = None
        elif token.type == "table_close":
            builder.end_block()
        elif token.type == "inline" and tokens[i - 1].type != "heading_open":
            content = _inline_text(token)
            if row is not None:
                row.append(content)
            elif list_depth:
                builder.line(f"- {content}")
            else:
                builder.paragraph(content)
        elif token.type in ("fence", "code_block"):
            builder.paragraph(token.content)
        elif token.type == "html_block":
            builder.paragraph(_TAG.sub(" ", token.content))
    return builder.build()


def _inline_text(token: Token) -> str:
    parts: list[str] = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type == "softbreak":
            parts.append(" ")
        elif child.type == "hardbreak":
            parts.append("\n")
        elif child.type == "image":
            parts.append(child.content)
    return "".join(parts)
