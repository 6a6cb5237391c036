"""Where the index lives, how it is opened, and which build is live.

Embedded (`INDEX_DIR`)::

    chroma/              one chromadb.PersistentClient store holding the chunk collections
    pointer.json         {"live": 7, "previous": 6}, replaced atomically
    manifests/<n>.json   what build n was made from; only the live and previous builds are kept
    writing.json         {"build": n} while an ingest writes build n (a killed one leaves it behind)
    store.lock           who may open chroma/ (below); ingest.lock: one ingest at a time (ingest/lock.py)

Chroma server: the same chunk collections, a collection `switchboard_builds` whose records hold the
pointer and the writing marker, and `switchboard_manifests` (each compressed into one metadata value:
a document would be indexed word by word, and make every write to the collection slow).

There is one chunk collection per embedding model (vectors of two models never share an index).
Its records carry the run of builds they belong to (see `records`), so a build is a filter, not a copy.

Chroma's embedded store belongs to one process at a time: each process loads a collection's vector
index into memory when it first uses it, and writes it back to disk from time to time. So a process
opens chroma/ only under store.lock, exclusively to write (ingest) and shared to read (the server),
and a reader never loads those files while an ingest is rewriting them. A reader holds the lock only
while it opens the store; then it searches its own loaded index, which keeps the records of its build
whatever an ingest adds later, and reads documents through SQLite, which is safe beside a writer.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import tempfile
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

    from app.settings import Settings

CHROMA_DIR = "chroma"
POINTER_FILE = "pointer.json"
MANIFESTS_DIR = "manifests"
WRITING_FILE = "writing.json"
STORE_LOCK = "store.lock"
CHUNKS_PREFIX = "switchboard_chunks_"
BUILDS_COLLECTION = "switchboard_builds"
MANIFESTS_COLLECTION = "switchboard_manifests"
COLLECTION_CONFIG: dict[str, Any] = {"hnsw": {"space": "cosine"}}
# Records of the builds collection carry no meaning as vectors, but Chroma wants one per record.
PLACEHOLDER_VECTOR = [1.0]
_POLL_SECONDS = 0.05


class StoreBusy(RuntimeError):
    """An ingest is writing the embedded store and did not finish within the wait."""


def chunks_collection(model_id: str) -> str:
    """The collection of one embedding model's chunks."""
    return CHUNKS_PREFIX + hashlib.sha256(model_id.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Pointer:
    live: int | None = None
    previous: int | None = None

    @property
    def newest(self) -> int:
        """The highest finished build: its records are the open ones. Anything above is unfinished."""
        return max(self.live or 0, self.previous or 0)

    @property
    def kept(self) -> set[int]:
        return {b for b in (self.live, self.previous) if b}

    def to_json(self) -> dict[str, int]:
        return {k: v for k, v in (("live", self.live), ("previous", self.previous)) if v}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pointer:
        return cls(live=int(data.get("live") or 0) or None, previous=int(data.get("previous") or 0) or None)


def _chroma_settings() -> Any:
    import chromadb.config

    return chromadb.config.Settings(anonymized_telemetry=False)


# --- Build state: the pointer, the manifests, the writing marker --------------------------------


class BuildState(ABC):
    """The small facts beside the chunks. Each write is atomic on its own."""

    @abstractmethod
    def pointer(self) -> Pointer: ...

    @abstractmethod
    def switch(self, pointer: Pointer) -> None:
        """Make `pointer` current in one atomic step."""

    @abstractmethod
    def manifest(self, build: int) -> dict[str, Any] | None: ...

    @abstractmethod
    def save_manifest(self, build: int, manifest: dict[str, Any]) -> None: ...

    @abstractmethod
    def manifests(self) -> list[int]: ...

    @abstractmethod
    def remove_manifest(self, build: int) -> None: ...

    @abstractmethod
    def writing(self) -> int | None:
        """The build an ingest started writing and has not finished cleaning up after, if any."""

    @abstractmethod
    def mark_writing(self, build: int | None) -> None: ...


class FileState(BuildState):
    """The embedded store's state, as small files read without opening Chroma (an unchanged corpus and
    the server's between-turn check cost a file read)."""

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = index_dir

    def pointer(self) -> Pointer:
        data = _read_json(self.index_dir / POINTER_FILE)
        return Pointer.from_json(data) if data else Pointer()

    def switch(self, pointer: Pointer) -> None:
        atomic_write_json(self.index_dir / POINTER_FILE, pointer.to_json())

    def manifest(self, build: int) -> dict[str, Any] | None:
        return _read_json(self._manifest_file(build))

    def save_manifest(self, build: int, manifest: dict[str, Any]) -> None:
        atomic_write_json(self._manifest_file(build), manifest)

    def manifests(self) -> list[int]:
        folder = self.index_dir / MANIFESTS_DIR
        return sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit()) if folder.is_dir() else []

    def remove_manifest(self, build: int) -> None:
        self._manifest_file(build).unlink(missing_ok=True)

    def writing(self) -> int | None:
        data = _read_json(self.index_dir / WRITING_FILE)
        return int(data["build"]) if data else None

    def mark_writing(self, build: int | None) -> None:
        if build is None:
            (self.index_dir / WRITING_FILE).unlink(missing_ok=True)
        else:
            atomic_write_json(self.index_dir / WRITING_FILE, {"build": build})

    def _manifest_file(self, build: int) -> Path:
        return self.index_dir / MANIFESTS_DIR / f"{build}.json"


class ServerState(BuildState):
    """A Chroma server's state, as records of two small collections; each write is one request."""

    _POINTER = "pointer"
    _WRITING = "writing"

    def __init__(self, client: ClientAPI) -> None:
        self._client = client
        self._collections: dict[str, Collection] = {}

    def pointer(self) -> Pointer:
        metadata = self._metadata(self._POINTER)
        return Pointer.from_json(metadata) if metadata else Pointer()

    def switch(self, pointer: Pointer) -> None:
        # One upsert is one log entry: readers see the old pointer or the new one.
        self._put(self._POINTER, {"live": pointer.live or 0, "previous": pointer.previous or 0})

    def manifest(self, build: int) -> dict[str, Any] | None:
        found = self._collection(MANIFESTS_COLLECTION).get(ids=[str(build)], include=["metadatas"])
        if not found["ids"]:
            return None
        return json.loads(zlib.decompress(base64.b64decode(str(found["metadatas"][0]["manifest"]))))

    def save_manifest(self, build: int, manifest: dict[str, Any]) -> None:
        packed = base64.b64encode(zlib.compress(json.dumps(manifest).encode())).decode()
        self._collection(MANIFESTS_COLLECTION).upsert(
            ids=[str(build)], embeddings=[PLACEHOLDER_VECTOR], metadatas=[{"build": build, "manifest": packed}]
        )

    def manifests(self) -> list[int]:
        return sorted(int(record) for record in self._collection(MANIFESTS_COLLECTION).get(include=[])["ids"])

    def remove_manifest(self, build: int) -> None:
        self._collection(MANIFESTS_COLLECTION).delete(ids=[str(build)])

    def writing(self) -> int | None:
        metadata = self._metadata(self._WRITING)
        return int(metadata["writing"]) if metadata and metadata.get("writing") else None

    def mark_writing(self, build: int | None) -> None:
        self._put(self._WRITING, {"writing": build or 0})

    def _collection(self, name: str) -> Collection:
        if name not in self._collections:
            self._collections[name] = self._client.get_or_create_collection(name, embedding_function=None)
        return self._collections[name]

    def _metadata(self, record: str) -> dict[str, Any] | None:
        found = self._collection(BUILDS_COLLECTION).get(ids=[record], include=["metadatas"])
        return dict(found["metadatas"][0] or {}) if found["ids"] else None

    def _put(self, record: str, metadata: dict[str, Any]) -> None:
        self._collection(BUILDS_COLLECTION).upsert(ids=[record], embeddings=[PLACEHOLDER_VECTOR], metadatas=[metadata])


def build_state(settings: Settings) -> BuildState:
    if settings.chroma_server:
        return ServerState(http_client(settings))
    return FileState(settings.index_dir)


# --- Opening Chroma -----------------------------------------------------------------------------

_http_clients: dict[tuple[str, int], ClientAPI] = {}
_http_clients_lock = threading.Lock()


def http_client(settings: Settings) -> ClientAPI:
    """One client per server for the process; it is safe to share between threads."""
    assert settings.chroma_host is not None
    key = (settings.chroma_host, settings.chroma_port)
    with _http_clients_lock:
        if key not in _http_clients:
            import chromadb

            _http_clients[key] = chromadb.HttpClient(host=key[0], port=key[1], settings=_chroma_settings())
        return _http_clients[key]


@contextmanager
def store_client(settings: Settings, *, exclusive: bool, wait_seconds: float) -> Iterator[ClientAPI]:
    """A client on the index. Embedded, the store is opened under store.lock (exclusive to write, shared
    to read), held until the client is closed; on a Chroma server, the process's client."""
    if settings.chroma_server:
        yield http_client(settings)
        return
    with store_lock(settings.index_dir, exclusive=exclusive, wait_seconds=wait_seconds):
        client = open_embedded(settings.index_dir)
        try:
            yield client
        finally:
            client.close()


def open_embedded(index_dir: Path) -> ClientAPI:
    """The embedded store; open it only under store.lock (see above), and close it when done."""
    import chromadb

    return chromadb.PersistentClient(path=index_dir / CHROMA_DIR, settings=_chroma_settings())


def chunk_collection(client: ClientAPI, model_id: str, create: bool = False) -> Collection | None:
    from chromadb.errors import NotFoundError

    name = chunks_collection(model_id)
    if create:
        return client.get_or_create_collection(
            name, configuration=COLLECTION_CONFIG, metadata={"model": model_id}, embedding_function=None
        )
    try:
        return client.get_collection(name, embedding_function=None)
    except NotFoundError:
        return None


@contextmanager
def store_lock(index_dir: Path, *, exclusive: bool, wait_seconds: float) -> Iterator[None]:
    """flock on INDEX_DIR/store.lock (see above)."""
    busy = f"an ingest is writing the index in {index_dir}"
    with flocked(index_dir / STORE_LOCK, exclusive=exclusive, wait_seconds=wait_seconds, busy=lambda: StoreBusy(busy)):
        yield


@contextmanager
def flocked(
    path: Path,
    *,
    exclusive: bool,
    wait_seconds: float,
    busy: Callable[[], Exception],
    waiting: Callable[[], None] | None = None,
) -> Iterator[TextIO]:
    """flock on `path`, polled for up to `wait_seconds` (`waiting()` is called once, when it is first
    found held), then `busy()` is raised. Yields the open file (a+). The kernel drops the lock when
    its holder dies, even by SIGKILL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(handle, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise busy() from None
                if waiting is not None:
                    waiting()
                    waiting = None
                time.sleep(_POLL_SECONDS)
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- Small files ----------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    """Write beside, fsync, then os.replace: a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(data, separators=(",", ":")))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
