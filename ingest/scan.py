"""Find the documents under the source directory and fingerprint them, without parsing anything.

This is all an unchanged corpus costs: a walk, a stat and a SHA-256 per file. Files that can be
refused from their name or size alone (hidden, unsupported type, empty, over the limit) are refused
here, each with its reason.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ingest.errors import SourceMissing
from ingest.loaders import SUPPORTED_SUFFIXES


@dataclass(frozen=True)
class Skip:
    path: str
    reason: str


@dataclass(frozen=True)
class SourceFile:
    path: Path
    source: str  # relative to the source directory, forward slashes: the name in the index
    sha256: str


@dataclass
class Scan:
    root: Path
    files: dict[str, SourceFile] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)


def scan_source(root: Path, max_file_mb: float) -> Scan:
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise SourceMissing(f"source directory {root} {what}")
    scan = Scan(root=root)
    max_bytes = int(max_file_mb * 1024 * 1024)
    for directory, subdirs, names in os.walk(root):
        base = Path(directory)
        for name in sorted(d for d in subdirs if d.startswith(".")):
            scan.skipped.append(Skip(_relative(base / name, root) + "/", "hidden directory"))
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(names):
            path = base / name
            source = _relative(path, root)
            reason = _refusal(path, name, max_file_mb, max_bytes)
            if reason is None:
                try:
                    scan.files[source] = SourceFile(path, source, file_sha256(path))
                    continue
                except OSError as exc:
                    reason = f"cannot be read ({exc.strerror})"
            scan.skipped.append(Skip(source, reason))
    return scan


def _refusal(path: Path, name: str, max_file_mb: float, max_bytes: int) -> str | None:
    if name.startswith("."):
        return "hidden file"
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        return f"unsupported file type ({suffix or 'no extension'})"
    if not path.is_file():
        return "not a regular file"
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    if size > max_bytes:
        return f"larger than the {max_file_mb:g} MB limit (INGEST_MAX_FILE_MB): {size / 1048576:.1f} MB"
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()
