"""What a build was made from: per file, its SHA-256 and how many chunks it gave (or why it gave none),
plus the model and chunker version. Comparing it with a fresh scan is how an unchanged corpus is
recognised without parsing a file or loading the model.

Each file's stat (size, modification and change times, inode) is kept beside its checksum, so the
next scan need not read a file whose stat has not moved. As git does with its index, a stat is only
trusted when the file had been still for a while before the scan that recorded it: a file written
twice within one tick of the clock keeps its times, and could otherwise hide its second write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MANIFEST_FORMAT = 1
STILL_NS = 2_000_000_000  # how long before the scan a file must have been left alone for its stat to count

Stat = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    chunks: int = 0
    skipped: str | None = None  # why the file gave no chunks
    stat: Stat | None = None  # the file's stat when sha256 was taken


@dataclass(frozen=True)
class Manifest:
    model_id: str
    chunker_version: int
    files: dict[str, FileEntry]
    scanned_ns: int = 0  # wall clock when the scan behind the stats began

    @property
    def chunks(self) -> int:
        return sum(entry.chunks for entry in self.files.values())

    def fingerprints(self) -> dict[str, str]:
        return {source: entry.sha256 for source, entry in self.files.items()}

    def checksum(self, source: str, stat: Stat) -> str | None:
        """The file's known checksum, if its stat is the recorded one and can be trusted."""
        entry = self.files.get(source)
        if entry is None or entry.stat != stat or stat[2] >= self.scanned_ns - STILL_NS:
            return None
        return entry.sha256

    def to_json(self) -> dict[str, Any]:
        files: dict[str, dict[str, Any]] = {}
        for source, entry in sorted(self.files.items()):
            files[source] = {"sha256": entry.sha256, "chunks": entry.chunks}
            if entry.skipped:
                files[source]["skipped"] = entry.skipped
            if entry.stat:
                files[source]["stat"] = list(entry.stat)
        return {
            "format": MANIFEST_FORMAT,
            "model": self.model_id,
            "chunker": self.chunker_version,
            "chunks": self.chunks,
            "scanned_ns": self.scanned_ns,
            "files": files,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Manifest | None:
        """None for a missing manifest or one this version cannot read: the next build starts afresh."""
        if not data or data.get("format") != MANIFEST_FORMAT:
            return None
        files = {
            source: FileEntry(
                str(entry["sha256"]),
                int(entry.get("chunks", 0)),
                entry.get("skipped"),
                tuple(entry["stat"]) if entry.get("stat") else None,  # type: ignore[arg-type]
            )
            for source, entry in data["files"].items()
        }
        return cls(
            model_id=str(data["model"]),
            chunker_version=int(data["chunker"]),
            files=files,
            scanned_ns=int(data.get("scanned_ns", 0)),
        )
