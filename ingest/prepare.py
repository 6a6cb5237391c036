"""Read and chunk one file: what the worker processes run.

Pure apart from reading the file: bytes in, passages (or the reason there are none) out. Parsing
runs in a process pool so a slow PDF uses another core and never blocks anything else, and each
file has a deadline: a parser that hangs on hostile input is killed and its file skipped, instead
of the ingest never finishing.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pebble import ProcessExpired, ProcessPool

from ingest.chunker import Chunker, Passage
from ingest.document import Unreadable
from ingest.loaders import load_document
from ingest.scan import file_sha256

NO_TEXT = "no extractable text (empty, or only images)"
_PRELOAD = ["ingest.prepare", "ingest.loaders.pdf", "ingest.loaders.docx", "ingest.loaders.html"]
_MAX_REASON_CHARS = 160


@dataclass(frozen=True)
class Prepared:
    source: str
    sha256: str  # of the bytes that were parsed
    passages: tuple[Passage, ...]
    skipped: str | None = None


def prepare_file(path: Path, source: str, tokenizer_file: Path, window: int) -> Prepared:
    try:
        data = path.read_bytes()
    except OSError as exc:  # removed or locked since the scan
        return Prepared(source, "", (), f"cannot be read ({exc.strerror})")
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        document = load_document(path.suffix, data)
    except Unreadable as exc:
        return Prepared(source, sha256, (), str(exc))
    except Exception as exc:  # a parser choking on hostile input is a skipped file, not a failed ingest
        return Prepared(source, sha256, (), f"could not be parsed ({type(exc).__name__}: {exc})"[:_MAX_REASON_CHARS])
    passages = tuple(_chunker(tokenizer_file, window).split(document))
    return Prepared(source, sha256, passages, None if passages else NO_TEXT)


@lru_cache(maxsize=2)
def _chunker(tokenizer_file: Path, window: int) -> Chunker:
    return Chunker(tokenizer_file, window)


def prepare_all(
    files: Sequence[tuple[Path, str]], tokenizer_file: Path, window: int, timeout_s: float
) -> Iterator[Prepared]:
    """Prepared files in completion order. Workers fork from a clean server process, never from
    this one, which may already hold model threads. A file still being parsed after `timeout_s`
    has its worker killed (and replaced) and is skipped."""
    if not files:
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    workers = min(len(files), os.cpu_count() or 1)
    pool = ProcessPool(max_workers=workers, context=context)
    try:
        futures = {
            pool.schedule(prepare_file, (path, source, tokenizer_file, window), timeout=timeout_s): (path, source)
            for path, source in files
        }
        for future in as_completed(futures):
            path, source = futures[future]
            try:
                yield future.result()
            except TimeoutError:
                # Remembered by content like any other skip: the same bytes would hang the parser again.
                reason = f"took longer than {timeout_s:g} s to parse (INGEST_PARSE_TIMEOUT_S)"
                yield Prepared(source, file_sha256(path), (), reason)
            except ProcessExpired as exc:  # the parser took its process down (a native library, memory)
                yield Prepared(source, file_sha256(path), (), f"the parser crashed (exit code {exc.exitcode})")
    finally:
        pool.stop()  # also on an interrupted ingest: no worker outlives it
        pool.join()
