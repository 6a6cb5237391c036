"""Shared fixtures: explicit settings, the fakes, a live server, and a guard against leaked tasks.
Constants and helpers live in `tests/support/`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app import create_app
from app.settings import Settings
from app.testing.fake_openai import FakeOpenAI
from app.testing.live_server import LiveServer
from tests.support.config import ACCOUNT_SID, API_KEY, ENGINE_ID, PUBLIC_URL, SECRET, TARGETS, TWILIO_TOKEN
from tests.support.paths import KNOWLEDGE
from tests.support.ports import refusing


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running after its fixtures are torn down."""
    before = asyncio.all_tasks()
    yield
    for _ in range(3):
        await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
    if leaked:
        for task in leaked:
            task.cancel()
        await asyncio.gather(*leaked, return_exceptions=True)
        pytest.fail(f"leaked tasks: {[t.get_name() + ' ' + repr(t.get_coro()) for t in leaked]}")


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One data dir for tests that need no private state, so the embedding model is exported once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def kb_index(shared_data_dir: Any) -> Path:
    """An index of the sample knowledge base in knowledge/, built once per session by the real ingest."""
    from ingest.pipeline import run_ingest

    index_dir = shared_data_dir / "kb-index"
    settings = Settings(_env_file=None, data_dir=shared_data_dir, index_dir=index_dir)
    report = run_ingest(settings, KNOWLEDGE)
    assert report.chunks > 100 and not report.skipped
    return index_dir


@pytest.fixture(params=["embedded", "server"])
def index_settings(request: pytest.FixtureRequest, tmp_path: Path, shared_data_dir: Path) -> Callable[..., Settings]:
    """Settings for an index of its own under tmp_path/kb, embedded or on the Chroma server that
    .ci/run starts (CHROMA_TEST_HOST/CHROMA_TEST_PORT; skipped without one)."""
    from tests.support.index import clear_server, server_address

    server: dict[str, Any] = {}
    if request.param == "server":
        address = server_address()
        server = {"chroma_host": address[0], "chroma_port": address[1]}
        clear_server(*address)

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "knowledge_dir": tmp_path / "kb",
            "data_dir": shared_data_dir,
            "index_dir": tmp_path / "index",
            **server,
        }
        return Settings(_env_file=None, **(values | overrides))

    return make


@pytest.fixture
def running() -> Iterator[list[Any]]:
    """`python -m ingest` processes a test starts (tests.support.index.Running), killed if left running."""
    started: list[Any] = []
    yield started
    for run in started:
        if run.process.poll() is None:
            run.process.kill()
            run.finish()


@pytest.fixture
def checkout(tmp_path: Path, shared_data_dir: Path, kb_index: Path) -> Path:
    """A fresh clone after `make run`, for commands run as a new user runs them (the index ingested
    once per test session; `make run` would build it the same way if it were missing). Its
    departments are open around the clock: what a call does must not depend on when it runs."""
    from tests.support.make_call import checkout as make_checkout

    return make_checkout(tmp_path / "checkout", shared_data_dir, kb_index, always_open=True)


@pytest.fixture
def make_settings(shared_data_dir: Any, kb_index: Path) -> Callable[..., Settings]:
    """Settings for a test server: the shared secret, the sample knowledge base, and any overrides."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "shared_secret": SECRET,
            "data_dir": shared_data_dir,
            "index_dir": kb_index,
            "log_level": "DEBUG",
            "departments_file": None,  # departments come from each test (TRANSFER_TARGETS, or a file of its own)
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
async def fake_model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def serve(make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    """`async with serve(**settings) as server:` runs the real app on 127.0.0.1 and a free port
    (`clock=SetClock(...)`: the time opening hours are read against)."""

    def start(clock: Any = None, **overrides: Any) -> LiveServer:
        return LiveServer(create_app(make_settings(**overrides), clock))

    return start


@pytest.fixture
def refused() -> Iterator[str]:
    """`127.0.0.1:<port>` where nothing answers: every connection is refused (a peer that is down)."""
    with refusing() as address:
        yield address


# --- the phone side: Twilio and ElevenLabs stand-ins ------------------------------------------


@pytest.fixture
async def fake_elevenlabs() -> AsyncIterator[Any]:
    from app.testing.fake_elevenlabs import FakeElevenLabs

    async with FakeElevenLabs(API_KEY, ENGINE_ID) as fake:
        yield fake


@pytest.fixture
def phone_settings(fake_elevenlabs: Any, shared_data_dir: Any, tmp_path: Any) -> dict[str, Any]:
    """Settings for a server that answers calls: Twilio signatures on, ElevenLabs at the fake."""
    return {
        "data_dir": shared_data_dir,
        "index_dir": tmp_path / "index",
        "public_url": PUBLIC_URL,
        "twilio_auth_token": TWILIO_TOKEN,
        "elevenlabs_api_key": API_KEY,
        "elevenlabs_base_url": fake_elevenlabs.base_url,
        "speech_engine_id": ENGINE_ID,
    }


@pytest.fixture
async def twilio_api() -> AsyncIterator[Any]:
    from app.testing.fake_twilio_api import FakeTwilioApi

    async with FakeTwilioApi(ACCOUNT_SID, TWILIO_TOKEN) as api:
        yield api


@pytest.fixture
def call_settings(phone_settings, fake_model, twilio_api, kb_index) -> dict[str, Any]:
    """A server that answers calls, with the model, Twilio REST, transfers and messages all set up.
    DATA_DIR is shared between tests (the embedding model is exported there once), so messages are
    told apart by their call's SID."""
    return {
        **phone_settings,
        "index_dir": kb_index,
        "openai_base_url": fake_model.base_url,
        "openai_model": "fake-model",
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_api_base_url": twilio_api.base_url,
        "transfer_targets": TARGETS,
    }


# --- the records store: SQLite and a real PostgreSQL ------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Any:
    """One throwaway PostgreSQL cluster for the session; each test makes its own database in it."""
    from tests.support.servers import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture(scope="module")
def redis() -> Any:
    """A throwaway redis-server for a module's tests (a test may stop it; `fresh_redis` restarts it)."""
    from tests.support.servers import redis_server

    with redis_server() as server:
        yield server


@pytest.fixture
async def fresh_redis(redis: Any) -> Any:
    """The module's redis-server, running and empty."""
    from redis.asyncio import Redis

    if not redis.answering():
        redis.start()
    client = Redis.from_url(redis.url)
    await client.flushall()
    await client.aclose()
    return redis


@pytest.fixture(params=["sqlite", "postgresql"])
def records_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty records store on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'records.sqlite3'}"
    import uuid

    return request.getfixturevalue("postgres").create_database(f"records_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def encoder(shared_data_dir: Any, kb_index: Path) -> Any:
    """The server's query encoder (the model exported once for the session by `kb_index`)."""
    from app.knowledge.embedding import query_encoder_for

    return query_encoder_for(Settings(_env_file=None, data_dir=shared_data_dir))
