"""What a build was made from: per file, its SHA-256 and how many chunks it gave (or why it gave none),
plus the model and chunker version. Comparing it with a fresh scan is how an unchanged corpus is
recognised without parsing a file or loading the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    chunks: int = 0
    skipped: str | None = None  # why the file gave no chunks


@dataclass(frozen=True)
class Manifest:
    model_id: str
    chunker_version: int
    files: dict[str, FileEntry]

    @property
    def chunks(self) -> int:
        return sum(entry.chunks for entry in self.files.values())

    def fingerprints(self) -> dict[str, str]:
        return {source: entry.sha256 for source, entry in self.files.items()}

    def to_json(self) -> dict[str, Any]:
        files: dict[str, dict[str, Any]] = {}
        for source, entry in sorted(self.files.items()):
            files[source] = {"sha256": entry.sha256, "chunks": entry.chunks}
            if entry.skipped:
                files[source]["skipped"] = entry.skipped
        return {
            "format": MANIFEST_FORMAT,
            "model": self.model_id,
            "chunker": self.chunker_version,
            "chunks": self.chunks,
            "files": files,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Manifest | None:
        """None for a missing manifest or one this version cannot read: the next build starts afresh."""
        if not data or data.get("format") != MANIFEST_FORMAT:
            return None
        files = {
            source: FileEntry(str(entry["sha256"]), int(entry.get("chunks", 0)), entry.get("skipped"))
            for source, entry in data["files"].items()
        }
        return cls(model_id=str(data["model"]), chunker_version=int(data["chunker"]), files=files)
