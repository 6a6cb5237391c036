"""Alembic revisions of the records store, run in place at start (`app.records.database`)."""
