"""The ingest: scan → (unchanged? stop) → parse and chunk the files that changed → embed the texts the
store has never seen → write the records that changed as the next build → validate → switch the
pointer → delete what neither the live nor the previous build needs.

An edit costs what changed: unchanged files are neither parsed nor copied (their records simply stay
in the next build), and a text is embedded once per model whatever file it moves to. Nothing the live
build can see is written before the switch (see `ingest.writer`), so an ingest that fails or is
killed at any point leaves the server answering exactly as before, and the next run undoes its
leftovers first.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.knowledge.embedding import ModelSpec, embedder_for, resolve_model
from app.knowledge.manifest import FileEntry, Manifest
from app.knowledge.records import CHUNKER_VERSION, ChunkRecord, record_id
from app.knowledge.store import BuildState, Pointer, build_state, chunk_collection, store_client
from app.settings import Settings
from ingest import writer
from ingest.errors import BuildInvalid, IngestError, NoPreviousBuild, NothingToIndex
from ingest.lease import Lease
from ingest.lock import ingest_lock
from ingest.prepare import Prepared, prepare_all
from ingest.progress import Stages
from ingest.report import Report, RollbackReport
from ingest.scan import Scan, Skip, require_directory, scan_source

DEFAULT_WAIT_SECONDS = 30.0
_EMBED_BATCH = 32  # also the granularity of the progress bar
# Up to this many texts to embed, the store stays open while they are embedded (see `_Ingest.run`).
_EMBED_IN_SESSION = 256


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
    pause_at: str | None = None,
) -> Report:
    started = time.monotonic()
    stages = Stages(progress, pause_at)
    root = source if source is not None else settings.knowledge_dir
    spec = resolve_model(settings.embedding_model)
    require_directory(root)  # before waiting for the lock: nothing to wait for

    def waiting() -> None:
        stages.start("waiting", f"another ingest is writing this index; up to {wait_seconds:g} s for it to finish")

    with ingest_lock(settings, wait_seconds, waiting) as lease:
        try:
            report = _Ingest(settings, spec, root, stages, strict, wait_seconds, lease).run()
        except StrictRefused as exc:
            exc.report.seconds = round(time.monotonic() - started, 2)
            raise
    report.seconds = round(time.monotonic() - started, 2)
    return report


def rollback(settings: Settings, *, wait_seconds: float = DEFAULT_WAIT_SECONDS) -> RollbackReport:
    """Make the previous build live again; the one it replaces becomes the previous."""
    started = time.monotonic()
    state = build_state(settings)
    with (
        ingest_lock(settings, wait_seconds) as lease,
        store_client(settings, exclusive=True, wait_seconds=wait_seconds) as client,
    ):
        pointer = state.pointer()
        if state.writing() is not None:
            writer.repair(client, state, pointer)
            state.mark_writing(None)
        manifest = Manifest.from_json(state.manifest(pointer.previous)) if pointer.previous else None
        if pointer.live is None or pointer.previous is None or manifest is None:
            raise NoPreviousBuild(f"there is no previous build to roll back to in {_location(settings)}")
        collection = chunk_collection(client, manifest.model_id)
        if collection is None:
            raise NoPreviousBuild(f"the previous build's passages are missing from {_location(settings)}")
        held = writer.count(collection, pointer.previous)
        if held != manifest.chunks:
            raise BuildInvalid(f"the previous build holds {held} chunks, expected {manifest.chunks}; it stays previous")
        if lease is not None:
            lease.check()
        state.switch(Pointer(live=pointer.previous, previous=pointer.live))
    return RollbackReport(pointer.previous, pointer.live, round(time.monotonic() - started, 2))


def _location(settings: Settings) -> str:
    return (
        f"Chroma server {settings.chroma_host}:{settings.chroma_port}"
        if settings.chroma_server
        else str(settings.index_dir)
    )


@dataclass
class _Plan:
    """Against the newest finished build, whose records are the open ones."""

    parse: list[str]  # new or changed files, to read and chunk
    kept: dict[str, FileEntry]  # unchanged files: their records stay as they are
    removed: list[str]  # files gone since
    fresh: bool  # no usable newest build (none yet, or another model or chunker): every open record is compared


@dataclass
class _Changes:
    """What the next build writes: new records, the records it ends, and the vectors for the new ones."""

    add: list[ChunkRecord] = field(default_factory=list)
    close: list[str] = field(default_factory=list)
    vectors: dict[str, Any] = field(default_factory=dict)  # by embed key
    pending: dict[str, str] = field(default_factory=dict)  # texts the store has never seen, to embed, by embed key
    embedded_keys: set[str] = field(default_factory=set)  # texts the model embedded in this run

    @property
    def embedded(self) -> int:
        return len(self.embedded_keys)


class _Ingest:
    def __init__(
        self,
        settings: Settings,
        spec: ModelSpec,
        root: Path,
        stages: Stages,
        strict: bool,
        wait_seconds: float,
        lease: Lease | None,
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.root = root
        self.stages = stages
        self.strict = strict
        self.wait_seconds = wait_seconds
        self.lease = lease
        self.state: BuildState = build_state(settings)

    def run(self) -> Report:
        pointer = self.state.pointer()
        if self.state.writing() is not None:  # an ingest was killed: undo its leftovers first
            with self._store() as client:
                writer.repair(client, self.state, pointer)
                self.state.mark_writing(None)
        live = Manifest.from_json(self.state.manifest(pointer.live)) if pointer.live else None
        newest = live if pointer.newest == pointer.live else Manifest.from_json(self.state.manifest(pointer.newest))
        self.scan: Scan = scan_source(self.root, self.settings.ingest_max_file_mb, [m for m in (newest, live) if m])
        report = self._compare(live, pointer.live)
        current = {source: f.sha256 for source, f in self.scan.files.items()}
        if live is not None and self._same_recipe(live) and live.fingerprints() == current:
            report.noop = True
            report.chunks = live.chunks
            report.skipped += [Skip(s, e.skipped) for s, e in sorted(live.files.items()) if e.skipped]
            if self.strict and report.skipped:
                raise StrictRefused(report)
            return report

        plan = self._plan(newest)
        self.stages.start("parsing", f"{len(plan.parse)} new or changed files, {len(plan.kept)} unchanged")
        prepared = sorted(self._prepare(plan.parse), key=lambda p: p.source)
        report.skipped += [Skip(s, e.skipped) for s, e in sorted(plan.kept.items()) if e.skipped]
        report.skipped += [Skip(p.source, p.skipped) for p in prepared if p.skipped]
        if self.strict and report.skipped:
            raise StrictRefused(report)
        chunks, entries = self._chunks(prepared)
        manifest = Manifest(self.spec.model_id, CHUNKER_VERSION, plan.kept | entries, self.scan.started_ns)
        if manifest.chunks == 0:
            raise NothingToIndex(
                f"no text to index in {self.scan.root}; the live build was not changed"
                + (f" ({len(report.skipped)} file(s) skipped)" if report.skipped else "")
            )
        build = pointer.newest + 1
        # Embedded, an open store holds store.lock exclusively, which keeps a starting server out, and
        # only writing needs it (ingest.lock keeps other ingests out). So many new texts (minutes of
        # embedding) are embedded with the store closed; a few are embedded in the one session, as
        # reopening the store loads its vector index again.
        with self._store() as client:
            changes = self._changes(client, plan, chunks)
            in_session = len(changes.pending) <= _EMBED_IN_SESSION
            if in_session:
                self._embed(changes)
                self._commit(client, pointer, live, build, manifest, changes)
        if not in_session:
            self._embed(changes)
            with self._store() as client:
                self._commit(client, pointer, live, build, manifest, changes)
        report.build = build
        report.chunks = manifest.chunks
        report.embedded = changes.embedded
        report.reused = manifest.chunks - sum(1 for r in changes.add if r.embed_key in changes.embedded_keys)
        return report

    def _store(self) -> AbstractContextManager[Any]:
        """The store, to write (embedded: opened under store.lock, held exclusively until closed)."""
        return store_client(self.settings, exclusive=True, wait_seconds=self.wait_seconds)

    def _commit(
        self, client: Any, pointer: Pointer, live: Manifest | None, build: int, manifest: Manifest, changes: _Changes
    ) -> None:
        """Write the next build, check it, make it live, and delete what neither kept build needs."""
        collection = chunk_collection(client, self.spec.model_id, create=True)
        assert collection is not None
        self._write(collection, build, changes)
        self.state.save_manifest(build, manifest.to_json())
        writer.validate(collection, build, [record_id(r.id, build) for r in changes.add], changes.close)
        self.stages.start("switching", f"build {build} goes live")
        self.stages.checkpoint("switching")
        self._still_ours()
        switched = Pointer(live=build, previous=pointer.live)
        self.state.switch(switched)
        self.stages.start("cleaning up")
        models = {build: self.spec.model_id} | ({pointer.live: live.model_id} if pointer.live and live else {})
        writer.collect_garbage(client, self.state, switched, models)
        self.state.mark_writing(None)

    def _same_recipe(self, manifest: Manifest) -> bool:
        return manifest.model_id == self.spec.model_id and manifest.chunker_version == CHUNKER_VERSION

    def _compare(self, live: Manifest | None, live_id: int | None) -> Report:
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

    def _plan(self, newest: Manifest | None) -> _Plan:
        usable = newest if newest is not None and self._same_recipe(newest) else None
        before = usable.files if usable else {}
        plan = _Plan(parse=[], kept={}, removed=sorted(set(before) - set(self.scan.files)), fresh=usable is None)
        for source, file in sorted(self.scan.files.items()):
            entry = before.get(source)
            if entry is None or entry.sha256 != file.sha256:
                plan.parse.append(source)
            else:
                plan.kept[source] = dataclasses.replace(entry, stat=file.stat)
        return plan

    def _prepare(self, sources: list[str]) -> list[Prepared]:
        files = [(Path(self.scan.files[s].path), s) for s in sources]
        prepared: list[Prepared] = []
        with self.stages.bar("parsing", len(files), "file") as bar:
            for file in prepare_all(
                files, self.spec.tokenizer_file, self.spec.window, self.settings.ingest_parse_timeout_s
            ):
                prepared.append(file)
                bar.update(1)
                self.stages.checkpoint("parsing")
        return prepared

    def _chunks(self, prepared: list[Prepared]) -> tuple[dict[str, ChunkRecord], dict[str, FileEntry]]:
        """The chunks of the parsed files by chunk id (a passage repeated in one file counts once), and
        their manifest entries."""
        chunks: dict[str, ChunkRecord] = {}
        entries: dict[str, FileEntry] = {}
        for file in prepared:
            made = [
                ChunkRecord.make(self.spec.model_id, file.source, passage.headings, position, passage.text, file.sha256)
                for position, passage in enumerate(file.passages)
            ]
            fresh = {record.id: record for record in made if record.id not in chunks}
            chunks.update(fresh)
            scanned = self.scan.files[file.source]
            # The stat stands for these bytes only if the file did not change between scan and parse.
            stat = scanned.stat if scanned.sha256 == file.sha256 else None
            entries[file.source] = FileEntry(file.sha256, len(fresh), file.skipped, stat)
        return chunks, entries

    def _changes(self, client: Any, plan: _Plan, chunks: dict[str, ChunkRecord]) -> _Changes:
        """Compare the parsed files' chunks with the open records of the same files: records to end,
        chunks to add, the vectors the store already has for the added texts, and the texts to embed."""
        collection = chunk_collection(client, self.spec.model_id, create=True)
        assert collection is not None
        affected = None if plan.fresh else plan.parse + plan.removed
        before = writer.open_records(collection, affected) if affected != [] else {}
        changes = _Changes(
            add=[record for chunk, record in chunks.items() if chunk not in before],
            close=[record for chunk, (record, _) in before.items() if chunk not in chunks],
        )
        changes.vectors = writer.known_vectors(collection, sorted({r.embed_key for r in changes.add}))
        for record in changes.add:
            if record.embed_key not in changes.vectors:
                changes.pending.setdefault(record.embed_key, record.embedded_text)
        return changes

    def _embed(self, changes: _Changes) -> None:
        """Embed each text the store has never seen, once."""
        pending = changes.pending
        if not pending:
            return
        self.stages.start("embedding", f"{len(pending)} new texts (loading the model)")
        embedder = embedder_for(self.settings)
        keys = list(pending)
        with self.stages.bar("embedding", len(keys), "chunk") as bar:
            for start in range(0, len(keys), _EMBED_BATCH):
                batch = keys[start : start + _EMBED_BATCH]
                changes.vectors.update(zip(batch, embedder.embed([pending[k] for k in batch]), strict=True))
                changes.embedded_keys.update(batch)
                bar.update(len(batch))
                self.stages.checkpoint("embedding")

    def _write(self, collection: Any, build: int, changes: _Changes) -> None:
        """The next build's records: nothing the live build sees changes (see `ingest.writer`)."""
        self._still_ours()
        self.state.mark_writing(build)
        self.stages.start("writing", f"build {build}: {len(changes.add)} new records, {len(changes.close)} ended")
        with self.stages.bar("writing", len(changes.add) + len(changes.close), "record") as bar:
            writer.close_records(collection, build, changes.close)
            bar.update(len(changes.close))
            for start in range(0, len(changes.add), writer.BATCH):
                self._still_ours()
                batch = changes.add[start : start + writer.BATCH]
                writer.add_records(collection, build, batch, [changes.vectors[r.embed_key] for r in batch])
                bar.update(len(batch))
                self.stages.checkpoint("writing")
        self.stages.checkpoint("writing")

    def _still_ours(self) -> None:
        """On a Chroma server, stop before a write if another ingest took over the lease."""
        if self.lease is not None:
            self.lease.check()
