"""Several replicas for `make bench`.

1. The bridge at 100 calls (50 frames/s each way, each call on its own phase), one process against
   WORKERS=2 with Redis, in the same run (bar: two workers keep p50 ≤ 2 ms and p99 ≤ 10 ms). Server
   CPU is the supervisor's and its workers' together; the load generator shares the machine's cores.
2. Brain overhead at 20 conversations with Redis and without, in the same run (bar: p50s ≤ 1 ms
   apart). The load is `bench_brain`'s.
"""

from __future__ import annotations

import os
from pathlib import Path

import uvloop

from app.testing.fake_elevenlabs import FakeElevenLabs
from tests.bench.bench_brain import compare_overhead
from tests.bench.bench_bridge import API_KEY, ENGINE_ID, SECONDS, bridge_server, run_load
from tests.support.servers import redis_server

CALLS = int(os.environ.get("BENCH_REPLICAS_CALLS", "100"))


def _line(name: str, r: dict[str, float]) -> str:
    return (
        f"{name:<26} caller→agent p50 {r['in_p50']:7.2f} ms p99 {r['in_p99']:8.2f} ms | agent→caller p50 "
        f"{r['out_p50']:7.2f} ms p99 {r['out_p99']:8.2f} ms | server CPU {r['server_cpu']:.0f} % "
        f"({r['cpu_per_call']:.2f} %/call) | load generator {r['loadgen_cpu']:.0f} % | {r['frames']} frames"
    )


async def _bridge(tmp: Path, redis_url: str) -> None:
    async with FakeElevenLabs(API_KEY, ENGINE_ID, echo=True, record=False) as fake:
        print(f"\nbridge, {CALLS} calls, {SECONDS:.0f} s each:")
        for name, env in (
            ("one process", {}),
            ("WORKERS=2 + Redis", {"WORKERS": "2", "REDIS_URL": redis_url}),
        ):
            work = tmp / name.split()[0]
            work.mkdir(exist_ok=True)
            with bridge_server(work, fake.base_url, env) as (url, pid):
                await run_load(url, pid, fake, 2, 1.0)  # warm-up
                print(_line(name, await run_load(url, pid, fake, CALLS, SECONDS)))


def test_bridge_one_process_against_two_workers(tmp_path: Path) -> None:
    with redis_server() as redis:
        uvloop.run(_bridge(tmp_path, redis.url))


def test_brain_overhead_with_and_without_redis(tmp_path: Path) -> None:
    with redis_server() as redis:
        compare_overhead(tmp_path, "call state", {"in-process": {}, "in Redis": {"REDIS_URL": redis.url}})
