"""One ingest at a time on a Chroma server, from any machine: a lease kept in Chroma itself.

The lease is a collection of claims; record `gen-<n>` names the holder of generation n. Chroma keeps
the first record added under an id and ignores later adds of it, so when several ingests claim the
next generation at once exactly one claim is stored, and each reads back whether it won. The holder
beats (bumps a counter on its claim) every few seconds from a thread; a claim whose beat has not moved
for `INGEST_LEASE_SECONDS`, by the waiting ingest's own clock, is a dead holder's and the next
generation may be claimed, so no two machines' clocks need to agree. Release marks the claim free.

A holder that was frozen longer than the lease (a suspended laptop) finds a newer generation when it
next checks, before each write, and stops. Chroma has no conditional write, so a holder frozen for
longer than the lease exactly between a check and the write after it could still land that one
batch: a lease in a store without compare-and-set cannot rule that out, only make it unlikely.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app.knowledge.store import PLACEHOLDER_VECTOR
from ingest.errors import IngestBusy, IngestError

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

LEASE_COLLECTION = "switchboard_ingest_lease"
_POLL_SECONDS = 0.2


class LeaseLost(IngestError):
    """Another ingest took over this one's lease: it must not change the index any more."""


class Lease:
    def __init__(self, client: ClientAPI, where: str, seconds: float) -> None:
        self._collection: Collection = client.get_or_create_collection(LEASE_COLLECTION, embedding_function=None)
        self._where = where
        self._seconds = seconds
        self._me = uuid.uuid4().hex
        self.holder = f"pid {os.getpid()} on {socket.gethostname()}"
        self._generation = 0
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._beats: threading.Thread | None = None
        # (generation, beat) of the current claim and when this process first saw it so.
        self._seen: tuple[int, int, float] | None = None

    def acquire(self, wait_seconds: float, waiting: Callable[[], None] | None = None) -> None:
        """Claim the lease, waiting up to `wait_seconds` for a live holder (`waiting()` is called
        once, when one is first seen)."""
        deadline = time.monotonic() + wait_seconds
        while True:
            claims = self._claims()
            top = max(claims, default=0)
            claim = claims.get(top)
            if claim is None or claim["released"] or self._dead(top, int(claim["beat"])):
                if self._claim(top + 1):
                    return
                continue
            if time.monotonic() >= deadline:
                raise IngestBusy(
                    f"another ingest ({claim['holder']}) is writing this index on {self._where}; "
                    f"waited {wait_seconds:g} s; run again when it has finished"
                )
            if waiting is not None:
                waiting()
                waiting = None
            time.sleep(_POLL_SECONDS)

    def check(self) -> None:
        """Raise LeaseLost if a newer generation was claimed (asks Chroma: the beat may be asleep)."""
        if self._lost.is_set() or max(self._claims(), default=0) != self._generation:
            self._lost.set()
            raise LeaseLost(f"another ingest took over this one's lease on {self._where}; nothing was switched")

    def release(self) -> None:
        self._stop.set()
        if self._beats is not None:
            self._beats.join()
        if not self._lost.is_set():
            self._collection.update(ids=[f"gen-{self._generation}"], metadatas=[{"released": 1}])

    def _claims(self) -> dict[int, dict[str, Any]]:
        found = self._collection.get(include=["metadatas"])
        return {int(m["generation"]): dict(m) for m in found["metadatas"] or []}

    def _dead(self, generation: int, beat: int) -> bool:
        now = time.monotonic()
        if self._seen is None or self._seen[:2] != (generation, beat):
            self._seen = (generation, beat, now)
        return now - self._seen[2] >= self._seconds

    def _claim(self, generation: int) -> bool:
        record = f"gen-{generation}"
        metadata = {"generation": generation, "holder": self.holder, "owner": self._me, "beat": 0, "released": 0}
        self._collection.add(ids=[record], embeddings=[PLACEHOLDER_VECTOR], metadatas=[metadata])
        stored = self._collection.get(ids=[record], include=["metadatas"])["metadatas"]
        if not stored or stored[0]["owner"] != self._me:
            return False
        self._generation = generation
        self._collection.delete(where={"generation": {"$lt": generation}})
        self._beats = threading.Thread(target=self._beat, name="ingest-lease", daemon=True)
        self._beats.start()
        return True

    def _beat(self) -> None:
        beat = 0
        while not self._stop.wait(self._seconds / 4):
            beat += 1
            try:
                if max(self._claims(), default=0) != self._generation:
                    self._lost.set()
                    return
                self._collection.update(ids=[f"gen-{self._generation}"], metadatas=[{"beat": beat}])
            except Exception:  # a missed beat is retried; a long outage ends in a lost lease
                continue
