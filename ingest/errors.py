"""Failures that end an ingest with one clear line and a distinct exit status. The live build is
never touched by any of them."""

from __future__ import annotations


class IngestError(Exception):
    exit_code = 1


class SourceMissing(IngestError):
    exit_code = 2


class IngestBusy(IngestError):
    exit_code = 3


class NothingToIndex(IngestError):
    pass


class NoPreviousBuild(IngestError):
    pass


class BuildInvalid(IngestError):
    pass
