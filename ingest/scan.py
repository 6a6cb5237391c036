"""Find the documents under the source directory and fingerprint them, without parsing anything.

This is all an unchanged corpus costs: a walk and a stat per file, and a SHA-256 of the files whose
stat differs from what the last builds recorded (`Manifest.checksum`). Files that can be refused from
their name or size alone (hidden, unsupported type, empty, over the limit) are refused here, each
with its reason.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.knowledge.manifest import Manifest, Stat
from ingest.errors import SourceMissing
from ingest.loaders import SUPPORTED_SUFFIXES


@dataclass(frozen=True)
class Skip:
    path: str
    reason: str


@dataclass(frozen=True)
class SourceFile:
    path: str  # a str, not a Path: making thousands of Paths costs more than the walk itself
    source: str  # relative to the source directory, forward slashes: the name in the index
    sha256: str
    stat: Stat


@dataclass
class Scan:
    root: Path
    started_ns: int  # wall clock, for the manifest: see Manifest.checksum
    known: Sequence[Manifest] = ()
    files: dict[str, SourceFile] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)


def scan_source(root: Path, max_file_mb: float, known: Sequence[Manifest] = ()) -> Scan:
    """`known`: manifests of recent builds, whose checksums stand for files whose stat has not moved."""
    require_directory(root)
    scan = Scan(root=root, started_ns=time.time_ns(), known=known)
    _visit(scan, str(root), "", max_file_mb, int(max_file_mb * 1024 * 1024))
    return scan


def require_directory(root: Path) -> None:
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise SourceMissing(f"source directory {root} {what}")


def _checksum(scan: Scan, source: str, path: str, stat: Stat) -> str:
    for manifest in scan.known:
        if (known := manifest.checksum(source, stat)) is not None:
            return known
    return file_sha256(path)


def _visit(scan: Scan, directory: str, prefix: str, max_file_mb: float, max_bytes: int) -> None:
    """One folder, as os.walk would go top down: its hidden folders, its files, then its folders. The
    directory entries' cached stat makes this a few microseconds a file."""
    with os.scandir(directory) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    folders = [entry for entry in entries if entry.is_dir()]
    for entry in folders:
        if entry.name.startswith("."):
            scan.skipped.append(Skip(f"{prefix}{entry.name}/", "hidden directory"))
    for entry in entries:
        if entry.is_dir():
            continue
        source = prefix + entry.name
        reason = _refusal(entry, max_file_mb, max_bytes)
        if reason is None:
            try:
                found = entry.stat()
                stat = (found.st_size, found.st_mtime_ns, found.st_ctime_ns, found.st_ino)
                scan.files[source] = SourceFile(entry.path, source, _checksum(scan, source, entry.path, stat), stat)
                continue
            except OSError as exc:
                reason = f"cannot be read ({exc.strerror})"
        scan.skipped.append(Skip(source, reason))
    for entry in folders:
        if not entry.name.startswith(".") and not entry.is_symlink():
            _visit(scan, entry.path, f"{prefix}{entry.name}/", max_file_mb, max_bytes)


def _refusal(entry: os.DirEntry[str], max_file_mb: float, max_bytes: int) -> str | None:
    if entry.name.startswith("."):
        return "hidden file"
    suffix = os.path.splitext(entry.name)[1].lower()
    suffix = "" if suffix == "." else suffix  # as Path.suffix: a trailing dot is no extension
    if suffix not in SUPPORTED_SUFFIXES:
        return f"unsupported file type ({suffix or 'no extension'})"
    if not entry.is_file():
        return "not a regular file"
    size = entry.stat().st_size
    if size == 0:
        return "empty file"
    if size > max_bytes:
        return f"larger than the {max_file_mb:g} MB limit (INGEST_MAX_FILE_MB): {size / 1048576:.1f} MB"
    return None


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
