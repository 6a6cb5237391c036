"""Alembic's environment: run on the connection `app.records.database` hands over, never on its own.

On PostgreSQL a transaction-scoped advisory lock serialises replicas that start together, so a
revision runs once; SQLite serialises writers by itself.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from app.records.schema import metadata

# An arbitrary constant: the advisory lock every replica takes while it upgrades the schema.
_UPGRADE_LOCK = 7_302_411


def _run(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # type: ignore[attr-defined]
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":  # type: ignore[attr-defined]
            connection.execute(text(f"SELECT pg_advisory_xact_lock({_UPGRADE_LOCK})"))  # type: ignore[attr-defined]
        context.run_migrations()


_run(context.config.attributes["connection"])
