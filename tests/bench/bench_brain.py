"""Brain overhead under load: time to first chunk at the Speech Engine's side minus the model's delay.

The server (`python -m app`) and the fake model each run in their own process; this process only
generates load: N conversations whose turns arrive at random moments, not in lockstep. Every turn
retrieves from an index of at least 5k passages (the eval corpora plus generated filler pages).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest
import uvloop

from app.knowledge.embedding import query_encoder_for
from app.knowledge.retrieval import Retriever
from app.settings import Settings
from app.testing.speech_engine import SpeechEngineClient
from ingest.pipeline import run_ingest
from tests.bench.chroma_server import chroma_server
from tests.bench.server_process import app_process

MODEL_DELAY_S = 0.2
TURNS_PER_CONVERSATION = 10
SECRET = "bench-secret"
DATA = Path("data").resolve()  # the product's default DATA_DIR: the embedding model is kept there
EVAL = Path(__file__).resolve().parents[3] / "shared" / "eval"
QUESTIONS = [
    "what time does the shop open on saturdays",
    "how much is the fastest internet plan",
    "my router has a blinking red light what does that mean",
    "can I get a refund if I cancel in the first month",
    "how do I pay my bill by phone",
    "is there an outage in my area right now",
]


@contextmanager
def brain_server(tmp: Path, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """The fake model and the server, each in its own process; yields the brain's ws URL."""
    port_file = tmp / "model.port"
    model = subprocess.Popen(
        [sys.executable, "-m", "app.testing.fake_openai", "--first-token-delay", str(MODEL_DELAY_S),
         "--inter-token-delay", "0.02", "--port-file", str(port_file)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {
            "SHARED_SECRET": SECRET,
            "OPENAI_BASE_URL": f"http://127.0.0.1:{port_file.read_text()}/v1",
            "OPENAI_MODEL": "fake",
            "OPENAI_API_KEY": "sk-fake",
            "LOG_LEVEL": "WARNING",
            "DATA_DIR": str(tmp / "data"),
            "INDEX_DIR": str(tmp / "data" / "index"),
            "DATABASE_URL": records_url(tmp),  # never the records of DATA_DIR, which may be a real one
            **(extra_env or {}),
        }
        with app_process(tmp, env) as (port, _pid):
            yield f"ws://127.0.0.1:{port}/ws"
    finally:
        model.terminate()
        model.wait(timeout=30)


async def _conversation(url: str, seed: int, overheads: list[float]) -> None:
    rng = random.Random(seed)
    async with await SpeechEngineClient.open(url, shared_secret=SECRET) as client:
        await client.init(f"conv_bench_{seed}")
        for _ in range(TURNS_PER_CONVERSATION):
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            answer = await client.ask(rng.choice(QUESTIONS), timeout=30)
            assert answer.first_chunk_s is not None
            overheads.append(answer.first_chunk_s - MODEL_DELAY_S)


def _percentiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return f"p50 {q[49] * 1000:6.1f} ms  p95 {q[94] * 1000:6.1f} ms  p99 {q[98] * 1000:6.1f} ms  (n={len(values)})"


async def run_load(url: str, conversations: int) -> list[float]:
    overheads: list[float] = []
    async with asyncio.TaskGroup() as group:
        for seed in range(conversations):
            group.create_task(_conversation(url, seed, overheads))
    return overheads


PAIRS = 3  # server processes differ by about a millisecond at p50 on their own: average over several


def records_url(work: Path) -> str:
    """The records store of a bench server started in `work`: its own, new each run."""
    return f"sqlite:///{work / 'records.sqlite3'}"


Variant = dict[str, str] | Callable[[Path], AbstractContextManager[dict[str, str]]]


def compare_overhead(tmp: Path, name: str, variants: dict[str, Variant], bar: str | None = "at most 1 ms") -> None:
    """Brain overhead at 20 conversations under two settings, their servers started in turn PAIRS
    times over (interleaved: drift hits both alike); prints both and the difference at p50. A
    setting is extra env, or a context manager given the run's directory that yields it (to prepare
    and inspect the run's store around the server)."""
    index_dir = big_index()
    results: dict[str, list[float]] = {label: [] for label in variants}
    for run in range(PAIRS):
        for label, variant in variants.items():
            work = tmp / f"{label}-{run}".replace(" ", "-")
            work.mkdir()
            setting = variant(work) if callable(variant) else nullcontext(variant)
            with setting as extra:
                env = {"INDEX_DIR": str(index_dir), "DATA_DIR": str(DATA), **extra}
                with brain_server(work, env) as url:
                    uvloop.run(run_load(url, 2))  # warm-up
                    results[label].extend(uvloop.run(run_load(url, 20)))
    (first, before), (second, after) = results.items()
    print(f"\nbrain overhead, 20 conversations, {name} {first}: {_percentiles(before)}")
    print(f"brain overhead, 20 conversations, {name} {second}: {_percentiles(after)}")
    difference = (statistics.median(after) - statistics.median(before)) * 1000
    print(f"difference at p50: {difference:+.2f} ms" + (f" (bar: {bar})" if bar else ""))


def big_index(**store: Any) -> Path:
    """An index of >= 5k passages, built once and reused (ingest is a no-op when nothing changed);
    `store` may name a Chroma server (chroma_host, chroma_port) to build it there instead."""
    docs = DATA / "bench" / "docs"
    if not docs.is_dir():
        rng = random.Random(0)
        sentences = [
            s.strip() + "."
            for source in sorted(EVAL.glob("*/docs/*.md"))
            for s in source.read_text(encoding="utf-8").replace("\n", " ").split(". ")
            if len(s.split()) > 5
        ]
        for source in sorted(EVAL.glob("*/docs")):
            shutil.copytree(source, docs / source.parent.name)
        for page in range(75):
            sections = [
                f"## Note {section}\n\n" + " ".join(rng.choice(sentences) for _ in range(40)) for section in range(6)
            ]
            (docs / "filler").mkdir(parents=True, exist_ok=True)
            (docs / "filler" / f"archive-{page:03d}.md").write_text(
                f"# Archive page {page}\n\n" + "\n\n".join(sections)
            )
    settings = Settings(_env_file=None, data_dir=DATA, index_dir=DATA / "bench" / "index", **store)
    report = run_ingest(settings, docs, progress=True)
    assert report.chunks >= 5000, report.chunks
    return settings.index_dir


@pytest.mark.parametrize("store", ["embedded", "server"])
def test_brain_overhead(store: str, tmp_path: Path) -> None:
    """On the embedded store, and on a `chroma run` of the bench's own (its data kept under
    data/bench/chroma, so the index is built once)."""
    with ExitStack() as stack:
        server: dict[str, Any] = {}
        if store == "server":
            host, port = stack.enter_context(chroma_server(DATA / "bench" / "chroma"))
            server = {"chroma_host": host, "chroma_port": port}
        index_dir = big_index(**server)
        settings = Settings(_env_file=None, data_dir=DATA, index_dir=index_dir, **server)
        retriever = Retriever(settings, query_encoder_for(settings))
        retriever.load()
        assert retriever.build is not None
        timings = [retriever.retrieve_sync(q).seconds for q in QUESTIONS * 20]
        print(f"\n{store}: retrieval alone over {len(retriever.build.ids)} passages: {_percentiles(timings)}")
        retriever.close()
        env = {"INDEX_DIR": str(index_dir), "DATA_DIR": str(settings.data_dir)}
        if server:
            env |= {"CHROMA_HOST": server["chroma_host"], "CHROMA_PORT": str(server["chroma_port"])}
        with brain_server(tmp_path, env) as url:
            uvloop.run(run_load(url, 2))  # warm-up: imports, first connections
            for n in (1, 20, 50):
                overheads = uvloop.run(run_load(url, n))  # the caller side adds as little as it can
                print(f"{store}: brain overhead, {n:>2} conversations: {_percentiles(overheads)}")
