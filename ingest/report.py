"""What an ingest tells its user: a few lines for people, one JSON object for scripts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ingest.scan import Skip


@dataclass
class Report:
    source: str
    build: int | None
    noop: bool = False
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[Skip] = field(default_factory=list)
    chunks: int = 0
    embedded: int = 0
    reused: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = [asdict(skip) for skip in self.skipped]
        return data

    def human(self) -> str:
        if self.noop:
            lines = [
                f"Nothing changed in {self.source} ({self.unchanged} files); "
                f"build {self.build} stays live ({self.chunks} chunks). {self.seconds:.1f} s"
            ]
        else:
            lines = [
                f"Build {self.build} is live: {self.chunks} chunks from {self.source}",
                f"  files:  {self.added} added, {self.changed} changed, {self.removed} removed, "
                f"{self.unchanged} unchanged",
                f"  chunks: {self.embedded} embedded, {self.reused} reused, in {self.seconds:.1f} s",
            ]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)}:")
            lines.extend(f"    {skip.path}: {skip.reason}" for skip in self.skipped)
        return "\n".join(lines)


@dataclass
class RollbackReport:
    build: int
    replaced: int
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def human(self) -> str:
        return f"Build {self.build} is live again (replacing {self.replaced}). {self.seconds:.1f} s"
