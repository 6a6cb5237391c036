"""Index fixtures and probes for the ingest and retrieval tests: settings for both stores, what a
build holds, what the store holds, and `python -m ingest` in another process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from app.knowledge.manifest import Manifest
from app.knowledge.records import ChunkRecord
from app.knowledge.search import LiveBuild
from app.knowledge.store import CHUNKS_PREFIX, Pointer, build_state, chunk_collection, store_client
from app.settings import Settings
from tests.support.processes import wait_stopped

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


def server_address() -> tuple[str, int]:
    """The `chroma run` that .ci/run starts; without one, server-mode tests are skipped (failed in CI)."""
    host, port = os.environ.get("CHROMA_TEST_HOST"), os.environ.get("CHROMA_TEST_PORT")
    if host and port:
        return host, int(port)
    message = "server mode needs CHROMA_TEST_HOST/CHROMA_TEST_PORT of a running `chroma run` (.ci/run starts one)"
    if os.environ.get("REQUIRE_TEST_SERVERS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def clear_server(host: str, port: int) -> None:
    import chromadb

    client = chromadb.HttpClient(host=host, port=port)
    for collection in client.list_collections():
        if collection.name.startswith("switchboard_"):
            client.delete_collection(collection.name)


def write_kb(root: Path) -> Path:
    (root / "support").mkdir(parents=True)
    (root / "plans.md").write_text(PLANS)
    (root / "support" / "hours.txt").write_text(HOURS)
    (root / "support" / "contact.html").write_text(CONTACT)
    return root


def reading(settings: Settings) -> AbstractContextManager[Any]:
    """A client on the index as the server opens it (embedded: under the shared store lock)."""
    return store_client(settings, exclusive=False, wait_seconds=30)


def pointer(settings: Settings) -> Pointer:
    return build_state(settings).pointer()


def build_records(settings: Settings, build: int | None = None) -> list[ChunkRecord]:
    """Every passage of a build (the live one by default), read as the server reads it."""
    state = build_state(settings)
    build = build or state.pointer().live
    assert build is not None, "no live build"
    manifest = Manifest.from_json(state.manifest(build))
    assert manifest is not None
    with reading(settings) as client:
        collection = chunk_collection(client, manifest.model_id)
        assert collection is not None
        return LiveBuild.load(collection, build).all_records()


def live_texts(settings: Settings) -> dict[str, str]:
    return {f"{r.source}#{r.position}": r.text for r in build_records(settings)}


def stored(settings: Settings) -> dict[str, tuple[int, int]]:
    """Every record in every chunk collection: id → (first, last)."""
    with reading(settings) as client:
        records: dict[str, tuple[int, int]] = {}
        for listed in client.list_collections():
            if listed.name.startswith(CHUNKS_PREFIX):
                found = client.get_collection(listed.name, embedding_function=None).get(include=["metadatas"])
                for record, metadata in zip(found["ids"], found["metadatas"], strict=True):
                    records[record] = (int(metadata["first"]), int(metadata["last"]))
        return records


def assert_tidy(settings: Settings) -> None:
    """Nothing left over: every record belongs to the live or previous build, no other manifest is
    kept, and no ingest is marked as writing."""
    state = build_state(settings)
    current = state.pointer()
    assert state.writing() is None
    assert set(state.manifests()) == current.kept
    orphans = {
        record: run
        for record, run in stored(settings).items()
        if not any(run[0] <= build <= run[1] for build in current.kept)
    }
    assert not orphans, orphans


# --- `python -m ingest` in another process ---------------------------------------------------


def cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHROMA_", "INDEX_", "KNOWLEDGE_", "DATA_"))}
    env |= {
        "KNOWLEDGE_DIR": str(settings.knowledge_dir),
        "DATA_DIR": str(settings.data_dir),
        "INDEX_DIR": str(settings.index_dir),
        "INGEST_LEASE_SECONDS": str(settings.ingest_lease_seconds),
    }
    if settings.chroma_host:
        env |= {"CHROMA_HOST": settings.chroma_host, "CHROMA_PORT": str(settings.chroma_port)}
    return env


def ingest_cli(settings: Settings, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`cwd`: a directory without a .env (by default the knowledge directory's parent)."""
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args],
        env=cli_env(settings),
        cwd=cwd or settings.knowledge_dir.parent,  # no .env of the developer's is read
        capture_output=True,
        text=True,
        timeout=180,
    )


class Running:
    """`python -m ingest` in the background, its output collected as it comes."""

    def __init__(self, settings: Settings, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ingest", *args],
            env=cli_env(settings),
            cwd=settings.knowledge_dir.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.stdout = ""
        self.stderr = ""
        self._arrived = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, "stderr"), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, name: str) -> None:
        # os.read returns whatever has arrived; a buffered read would sit on a short progress line.
        while chunk := os.read(stream.fileno(), 4096):
            with self._arrived:
                setattr(self, name, getattr(self, name) + chunk.decode(errors="replace"))
                self._arrived.notify_all()
        with self._arrived:
            self._arrived.notify_all()  # the stream ended: a waiter stops waiting for more

    def wait_for(self, pattern: str, timeout: float = 120, stream: str = "stderr") -> None:
        """Until the ingest has written something matching `pattern`."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while not re.search(pattern, getattr(self, stream)):
                assert self.process.poll() is None, f"ingest ended early: {self.stderr[-3000:]}"
                left = deadline - time.monotonic()
                assert left > 0, f"no {pattern!r} in: {getattr(self, stream)[-3000:]}"
                self._arrived.wait(left)

    def wait_stopped(self, stage: str) -> None:
        """Until the ingest has stopped itself at `stage` (--pause-at)."""
        self.wait_for(rf"paused at {stage}")
        wait_stopped(self.process)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.finish()

    def finish(self) -> int:
        code = self.process.wait(timeout=180)
        for reader in self._readers:
            reader.join(5)
        return code


@contextmanager
def retriever(settings: Settings) -> Iterator[Any]:
    """The server's retriever on this index, loaded."""
    from app.knowledge.embedding import query_encoder_for
    from app.knowledge.retrieval import Retriever

    found = Retriever(settings, query_encoder_for(settings))
    found.load()
    assert found.ready, found.error
    try:
        yield found
    finally:
        found.close()


def answers(settings: Settings, question: str) -> list[tuple[str, str]]:
    """What the server's retrieval hands on for a question: (source, text) of each passage."""
    with retriever(settings) as found:
        return [(p.source, p.text) for p in found.retrieve_sync(question).passages]
