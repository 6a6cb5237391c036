"""The ingest: scan → (unchanged? stop) → read and chunk what changed → embed what is new → write a
new build beside the live one → validate → switch the pointer → drop builds older than the previous.

Nothing here touches the live build: it is only read, for its manifest and to copy embeddings, so an
ingest that fails or is killed at any point leaves the server answering exactly as before.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.knowledge.index import (
    CHUNKER_VERSION,
    BuildStore,
    ChunkRecord,
    ModelSpec,
    Pointer,
    add_chunks,
    embedder_for,
    open_store,
    read_chunks,
    resolve_model,
)
from app.settings import Settings
from ingest.errors import BuildInvalid, IngestError, NoPreviousBuild, NothingToIndex
from ingest.lock import ingest_lock
from ingest.manifest import FileEntry, Manifest
from ingest.prepare import Prepared, prepare_all
from ingest.report import Report, RollbackReport
from ingest.scan import Scan, Skip, scan_source

DEFAULT_WAIT_SECONDS = 30.0
_WRITE_BATCH = 1000
_EMBED_BATCH = 32  # also the granularity of the progress bar and of writes
_PROBE_MAX_DISTANCE = 1e-3


class StrictRefused(IngestError):
    """--strict and some files were skipped: nothing was written."""

    def __init__(self, report: Report) -> None:
        super().__init__(f"--strict: {len(report.skipped)} file(s) skipped; the live build was not changed")
        self.report = report


def run_ingest(
    settings: Settings,
    source: Path | None = None,
    *,
    wait_seconds: float = DEFAULT_WAIT_SECONDS,
    progress: bool = False,
    strict: bool = False,
) -> Report:
    started = time.monotonic()
    root = source if source is not None else settings.knowledge_dir
    spec = resolve_model(settings.embedding_model)
    scan = scan_source(root, settings.ingest_max_file_mb)
    with ingest_lock(settings.index_dir, wait_seconds):
        store = open_store(settings)
        try:
            report = _Ingest(settings, store, spec, scan, progress, strict).run()
        except StrictRefused as exc:
            exc.report.seconds = round(time.monotonic() - started, 2)
            raise
        finally:
            store.close()
    report.seconds = round(time.monotonic() - started, 2)
    return report


def rollback(settings: Settings, *, wait_seconds: float = DEFAULT_WAIT_SECONDS) -> RollbackReport:
    """Make the previous build live again; the one it replaces becomes the previous."""
    started = time.monotonic()
    with ingest_lock(settings.index_dir, wait_seconds):
        store = open_store(settings)
        try:
            pointer = store.pointer()
            if pointer.live is None or pointer.previous is None or store.manifest(pointer.previous) is None:
                raise NoPreviousBuild(f"there is no previous build to roll back to in {store.location}")
            _validate(store, pointer.previous)
            store.switch(Pointer(live=pointer.previous, previous=pointer.live))
        finally:
            store.close()
    return RollbackReport(pointer.previous, pointer.live, round(time.monotonic() - started, 2))


def new_build_id() -> str:
    """Sortable by time, unique across machines writing to one Chroma server."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"


@dataclass
class _Plan:
    copy: list[str]  # unchanged files whose chunks are copied from the live build
    parse: list[str]  # files to read and chunk
    carried_skips: list[Skip]  # unchanged files that gave no chunks last time, for the same reason


class _Ingest:
    def __init__(
        self, settings: Settings, store: BuildStore, spec: ModelSpec, scan: Scan, progress: bool, strict: bool
    ) -> None:
        self.settings = settings
        self.store = store
        self.spec = spec
        self.scan = scan
        self.progress = progress
        self.strict = strict

    def run(self) -> Report:
        pointer = self.store.pointer()
        for build_id in self.store.builds():
            if build_id not in (pointer.live, pointer.previous):
                self.store.remove(build_id)  # left by an ingest that crashed or was killed
        live = Manifest.from_json(self.store.manifest(pointer.live)) if pointer.live else None
        report = self._compare(live, pointer.live)
        current = {source: f.sha256 for source, f in self.scan.files.items()}
        if live is not None and self._same_recipe(live) and live.fingerprints() == current:
            report.noop = True
            report.chunks = live.chunks
            report.skipped += [Skip(s, e.skipped) for s, e in sorted(live.files.items()) if e.skipped]
            if self.strict and report.skipped:
                raise StrictRefused(report)
            return report

        plan = self._plan(live)
        prepared = sorted(self._prepare(plan.parse), key=lambda p: p.source)
        report.skipped += plan.carried_skips + [Skip(p.source, p.skipped) for p in prepared if p.skipped]
        if self.strict and report.skipped:
            raise StrictRefused(report)
        live_chunks = self._read_live(pointer.live, live, set(plan.copy))
        records, vectors, entries = self._assemble(plan, prepared, live_chunks)
        if not records:
            raise NothingToIndex(
                f"no text to index in {self.scan.root}; the live build was not changed"
                + (f" ({len(report.skipped)} file(s) skipped)" if report.skipped else "")
            )
        build_id = new_build_id()
        try:
            report.embedded = self._write(build_id, records, vectors)
            self.store.seal(build_id, Manifest(self.spec.model_id, CHUNKER_VERSION, entries).to_json())
            _validate(self.store, build_id, expected=len(records))
        except BaseException:
            self.store.remove(build_id)
            raise
        previous = pointer.live if live is not None else None
        self.store.switch(Pointer(live=build_id, previous=previous))
        for old in self.store.builds():
            if old not in (build_id, previous):
                self.store.remove(old)
        report.build = build_id
        report.chunks = len(records)
        report.reused = sum(1 for r in records if r.embed_key in vectors)
        return report

    def _same_recipe(self, live: Manifest) -> bool:
        return live.model_id == self.spec.model_id and live.chunker_version == CHUNKER_VERSION

    def _compare(self, live: Manifest | None, live_id: str | None) -> Report:
        before = live.fingerprints() if live else {}
        report = Report(source=str(self.scan.root), build=live_id, skipped=list(self.scan.skipped))
        for source, file in self.scan.files.items():
            if source not in before:
                report.added += 1
            elif before[source] != file.sha256:
                report.changed += 1
            else:
                report.unchanged += 1
        report.removed = sum(1 for source in before if source not in self.scan.files)
        return report

    def _plan(self, live: Manifest | None) -> _Plan:
        plan = _Plan(copy=[], parse=[], carried_skips=[])
        for source, file in sorted(self.scan.files.items()):
            entry = live.files.get(source) if live and self._same_recipe(live) else None
            if entry is None or entry.sha256 != file.sha256:
                plan.parse.append(source)
            elif entry.skipped:
                plan.carried_skips.append(Skip(source, entry.skipped))
            else:
                plan.copy.append(source)
        return plan

    def _prepare(self, sources: list[str]) -> Iterator[Prepared]:
        files = [(self.scan.files[s].path, s) for s in sources]
        with _progress(self.progress, len(files), "reading", "file") as bar:
            for prepared in prepare_all(
                files, self.spec.tokenizer_file, self.spec.window, self.settings.ingest_parse_timeout_s
            ):
                bar.update(1)
                yield prepared

    def _read_live(
        self, live_id: str | None, live: Manifest | None, copy: set[str]
    ) -> tuple[dict[str, list[ChunkRecord]], dict[str, Any]]:
        """From the live build: the records of files copied as they are, and every vector by embed key."""
        records: dict[str, list[ChunkRecord]] = {}
        vectors: dict[str, Any] = {}
        if live_id is None or live is None or live.model_id != self.spec.model_id:
            return records, vectors
        for record, vector in read_chunks(self.store.open(live_id), with_embeddings=True):
            vectors[record.embed_key] = vector
            if record.source in copy:
                records.setdefault(record.source, []).append(record)
        return records, vectors

    def _assemble(
        self,
        plan: _Plan,
        prepared: list[Prepared],
        live_chunks: tuple[dict[str, list[ChunkRecord]], dict[str, Any]],
    ) -> tuple[list[ChunkRecord], dict[str, Any], dict[str, FileEntry]]:
        """Every record of the new build, the vectors already known (by embed key), and the manifest."""
        copied, known = live_chunks
        records: dict[str, ChunkRecord] = {}
        entries: dict[str, FileEntry] = {}
        for source in plan.copy:
            file_records = sorted(copied.get(source, []), key=lambda r: r.position)
            records.update((r.id, r) for r in file_records)
            entries[source] = FileEntry(self.scan.files[source].sha256, len(file_records))
        for skip in plan.carried_skips:
            entries[skip.path] = FileEntry(self.scan.files[skip.path].sha256, 0, skip.reason)
        for file in prepared:
            made = [
                ChunkRecord.make(self.spec.model_id, file.source, p.headings, position, p.text, file.sha256)
                for position, p in enumerate(file.passages)
            ]
            fresh = {r.id: r for r in made if r.id not in records}  # a passage repeated in one file counts once
            records.update(fresh)
            entries[file.source] = FileEntry(file.sha256, len(fresh), file.skipped)
        ordered = sorted(records.values(), key=lambda r: (r.source, r.position))
        return ordered, {r.embed_key: known[r.embed_key] for r in ordered if r.embed_key in known}, entries

    def _write(self, build_id: str, records: list[ChunkRecord], known: dict[str, Any]) -> int:
        """Write every record into a new build; returns how many texts the model had to embed."""
        collection = self.store.create(build_id)
        ready = [r for r in records if r.embed_key in known]
        for batch in _batches(ready, _WRITE_BATCH):
            add_chunks(collection, batch, [known[r.embed_key] for r in batch])
        pending: dict[str, list[ChunkRecord]] = {}  # by embed key: each distinct text is embedded once
        for record in records:
            if record.embed_key not in known:
                pending.setdefault(record.embed_key, []).append(record)
        if not pending:
            return 0
        if self.progress:
            print("loading the embedding model...", file=sys.stderr, flush=True)
        embedder = embedder_for(self.settings)
        with _progress(self.progress, len(pending), "embedding", "chunk") as bar:
            for keys in _batches(list(pending), _EMBED_BATCH):
                vectors = embedder.embed([pending[k][0].embedded_text for k in keys])
                batch = [(r, v) for k, v in zip(keys, vectors, strict=True) for r in pending[k]]
                add_chunks(collection, [r for r, _ in batch], [v for _, v in batch])
                bar.update(len(keys))
        return len(pending)


def _validate(store: BuildStore, build_id: str, expected: int | None = None) -> None:
    """Reopen the build, count it, and find one of its own vectors with a query."""
    collection = store.open(build_id)
    count = collection.count()
    if count == 0 or (expected is not None and count != expected):
        raise BuildInvalid(f"build {build_id} holds {count} chunks, expected {expected or 'some'}")
    probe = collection.get(limit=1, include=["embeddings"])
    found = collection.query(query_embeddings=probe["embeddings"], n_results=1, include=["distances"])
    if not found["ids"][0] or found["distances"][0][0] > _PROBE_MAX_DISTANCE:
        raise BuildInvalid(f"build {build_id} does not answer a query for its own chunk {probe['ids'][0]}")


def _batches(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _progress(enabled: bool, total: int, desc: str, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled, leave=False)
