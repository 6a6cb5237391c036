"""Knowledge ingest: turn the documents in KNOWLEDGE_DIR into a new index build, atomically and
incrementally. `python -m ingest --help` for the command; `run_ingest` and `rollback` to call it."""

from ingest.pipeline import rollback, run_ingest

__all__ = ["rollback", "run_ingest"]
