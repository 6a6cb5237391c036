"""The ingest's operations on the chunk collections: what it reads of the open build, what it writes
for the next one, how it checks it, and how it tidies up after a finished or a killed ingest.

Every write here is to records no live build can see until the pointer moves: new records start at
the new build's number, and a record the new build leaves out gets `last` = the build before it,
which is still inside its run. So the live build answers exactly as before until the switch.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from app.knowledge.manifest import Manifest
from app.knowledge.records import OPEN, ChunkRecord, chunk_of, record_id, visible_in
from app.knowledge.store import CHUNKS_PREFIX, BuildState, FileState, Pointer, chunks_collection
from ingest.errors import BuildInvalid

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

BATCH = 256  # records per write, and the granularity of the progress bar
_LOOKUP_BATCH = 200  # values in one `$in` filter
_PROBE_MAX_DISTANCE = 1e-3
# What the index looked like before builds shared one store (one store or collection per build).
_OLD_EMBEDDED = ("builds", "live.json")
_OLD_SERVER_PREFIXES = ("switchboard_build_", "switchboard_pointer")


def open_records(collection: Collection, sources: Sequence[str] | None) -> dict[str, tuple[str, dict[str, Any]]]:
    """The newest build's records (those still open) of these sources, or of all sources: chunk id →
    (record id, metadata)."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    filters: Iterable[dict[str, Any]] = (
        [{"last": OPEN}]
        if sources is None
        else ({"source": {"$in": list(batch)}} for batch in _batches(sources, _LOOKUP_BATCH))
    )
    for where in filters:
        page = collection.get(where=where, include=["metadatas"])
        for record, metadata in zip(page["ids"], page["metadatas"] or [], strict=True):
            if metadata["last"] == OPEN:
                found[chunk_of(record)] = (record, dict(metadata))
    return found


def known_vectors(collection: Collection, keys: Sequence[str]) -> dict[str, Any]:
    """Vectors this model already made for these texts (by embed key), from any record in the store."""
    vectors: dict[str, Any] = {}
    for batch in _batches(list(keys), _LOOKUP_BATCH):
        page = collection.get(where={"embed_key": {"$in": batch}}, include=["metadatas", "embeddings"])
        for metadata, vector in zip(page["metadatas"] or [], page["embeddings"], strict=True):
            vectors.setdefault(str(metadata["embed_key"]), vector)
    return vectors


def add_records(collection: Collection, build: int, records: Sequence[ChunkRecord], vectors: Sequence[Any]) -> None:
    collection.add(
        ids=[record_id(r.id, build) for r in records],
        documents=[r.text for r in records],
        metadatas=[r.metadata(first=build) for r in records],
        embeddings=list(vectors),
    )


def close_records(collection: Collection, build: int, records: Sequence[str]) -> None:
    """The records the new build leaves out end their run with the build before it."""
    for batch in _batches(list(records), BATCH):
        collection.update(ids=batch, metadatas=[{"last": build - 1}] * len(batch))


def count(collection: Collection, build: int) -> int:
    """How many records a build holds (reads every id of it: for rollback, not for every edit)."""
    return len(collection.get(where=visible_in(build), include=[])["ids"])


def validate(collection: Collection, build: int, added: Sequence[str], closed: Sequence[str]) -> None:
    """Read back what was written (the new records start at `build` and are open, the ended runs end
    just before it) and find one new record's own vector with a query. This costs what changed."""
    for batch in _batches(list(added), _LOOKUP_BATCH):
        found = collection.get(ids=batch, include=["metadatas"])
        runs = {(m["first"], m["last"]) for m in found["metadatas"] or []}
        if len(found["ids"]) != len(batch) or runs - {(build, OPEN)}:
            raise BuildInvalid(f"build {build}: its new records did not all reach the index")
    for batch in _batches(list(closed), _LOOKUP_BATCH):
        found = collection.get(ids=batch, include=["metadatas"])
        if len(found["ids"]) != len(batch) or any(m["last"] != build - 1 for m in found["metadatas"] or []):
            raise BuildInvalid(f"build {build}: the records it leaves out were not all ended")
    if not added:
        return
    vector = collection.get(ids=[added[0]], include=["embeddings"])["embeddings"]
    found = collection.query(query_embeddings=vector, n_results=1, include=["distances"])
    if not found["ids"][0] or found["distances"][0][0] > _PROBE_MAX_DISTANCE:
        raise BuildInvalid(f"build {build} does not answer a query for its own chunk {added[0]}")


def repair(client: ClientAPI, state: BuildState, pointer: Pointer) -> None:
    """Undo what an unfinished ingest wrote: its new records go, and the runs it ended are reopened.
    Then the store is exactly as the newest finished build left it."""
    newest = pointer.newest
    for collection in _chunk_collections(client):
        _delete(collection, collection.get(where={"first": {"$gt": newest}}, include=[])["ids"])
        ended = collection.get(where={"last": newest}, include=[])["ids"]
        for batch in _batches(ended, BATCH):
            collection.update(ids=batch, metadatas=[{"last": OPEN}] * len(batch))
    collect_garbage(client, state, pointer)


def collect_garbage(
    client: ClientAPI, state: BuildState, pointer: Pointer, models: dict[int, str] | None = None
) -> None:
    """Delete what neither the live nor the previous build needs: records outside both their runs,
    collections of models neither uses, other manifests, and the index layout from before builds
    shared one store. `models`: the kept builds' model ids, when the caller knows them (else they are
    read from the manifests)."""
    kept: dict[int, str] = {}
    for build in pointer.kept:
        model = (models or {}).get(build)
        if model is None and (manifest := Manifest.from_json(state.manifest(build))) is not None:
            model = manifest.model_id
        if model is not None:
            kept[build] = chunks_collection(model)
    for collection in _chunk_collections(client):
        builds = [build for build, name in kept.items() if name == collection.name]
        if not builds:
            client.delete_collection(collection.name)
            continue
        outside = [{"$or": [{"first": {"$gt": b}}, {"last": {"$lt": b}}]} for b in builds]
        where = outside[0] if len(outside) == 1 else {"$and": outside}
        _delete(collection, collection.get(where=where, include=[])["ids"])
    for build in state.manifests():
        if build not in kept:
            state.remove_manifest(build)
    _remove_old_layout(client, state)


def _remove_old_layout(client: ClientAPI, state: BuildState) -> None:
    if isinstance(state, FileState):
        for name in _OLD_EMBEDDED:
            path = state.index_dir / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return
    for collection in client.list_collections():
        if collection.name.startswith(_OLD_SERVER_PREFIXES):
            client.delete_collection(collection.name)


def _chunk_collections(client: ClientAPI) -> list[Collection]:
    return [
        client.get_collection(c.name, embedding_function=None)
        for c in client.list_collections()
        if c.name.startswith(CHUNKS_PREFIX)
    ]


def _delete(collection: Collection, ids: Sequence[str]) -> None:
    for batch in _batches(list(ids), BATCH):
        collection.delete(ids=batch)


def _batches(items: Sequence[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
