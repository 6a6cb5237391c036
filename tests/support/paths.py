"""Files of the repository that tests read."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KNOWLEDGE = REPO / "knowledge"  # the sample knowledge base `make ingest` reads by default
README = REPO / "README.md"
ENV_EXAMPLE = REPO / ".env.example"
CALLS = REPO / "calls"  # the sample company's call scenarios (`make test-calls`)
DEPARTMENTS = REPO / "departments.toml"  # the sample company's departments
