"""Bridge overhead under load: N calls, each 50 frames/s both ways, through `python -m app`.

The server runs in its own process; this process is the load: N Twilio callers (signed webhook,
signed upgrade, 20 ms μ-law frames paced in real time, mark echoes) and the ElevenLabs stand-in in
echo mode (every caller frame comes straight back as agent audio).

Each frame carries its own id in its first bytes (the bridge relays bytes untouched), so every
frame is timed one way: caller send → ElevenLabs receive (caller_to_agent), and ElevenLabs send →
caller receive (agent_to_caller). That is the whole hop through the bridge, including both
loopback socket legs and this process's own scheduling, so it over-states what the bridge adds.
Server CPU comes from /proc for the server process over the measuring window.
"""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvloop

from app.testing.fake_elevenlabs import FakeConversation, FakeElevenLabs
from app.testing.twilio_caller import TwilioCaller, ulaw_frames
from tests.bench.server_process import app_process
from tests.support.processes import cpu_seconds

API_KEY = "bench-elevenlabs-key"
ENGINE_ID = "seng_bench"
AUTH_TOKEN = "bench-twilio-token"
PUBLIC_URL = "https://bridge-bench.example"
SECONDS = float(os.environ.get("BENCH_BRIDGE_SECONDS", "20"))
CALLS = [int(n) for n in os.environ.get("BENCH_BRIDGE_CALLS", "10,50,100").split(",")]
WARMUP_S = 2.0
FRAME_S = 0.02
TONE = ulaw_frames(0.02)[0]


@contextmanager
def bridge_server(tmp: Path, elevenlabs_url: str, extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    env = {
        "PUBLIC_URL": PUBLIC_URL,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "ELEVENLABS_API_KEY": API_KEY,
        "ELEVENLABS_BASE_URL": elevenlabs_url,
        "SPEECH_ENGINE_ID": ENGINE_ID,
        "SHARED_SECRET": "bench-secret",
        "MAX_CONCURRENT_CALLS": "1000",
        "LOG_LEVEL": "WARNING",
        "DATA_DIR": str(Path("data").resolve()),  # the exported embedding model is shared, not redone
        "INDEX_DIR": str(tmp / "index"),
        **(extra_env or {}),
    }
    with app_process(tmp, env, ready_path="/healthz") as (port, pid):
        yield f"http://127.0.0.1:{port}", pid


class Timings:
    """Send and receive times per frame id, each direction."""

    def __init__(self) -> None:
        self.measuring = False
        self.sent_in: dict[str, float] = {}
        self.sent_out: dict[str, float] = {}
        self.caller_to_agent: list[float] = []
        self.agent_to_caller: list[float] = []

    def at_agent(self, conv: FakeConversation, payload: str) -> None:
        now = time.perf_counter()
        key = payload[:12]
        sent = self.sent_in.pop(key, None)
        if sent is not None and self.measuring:
            self.caller_to_agent.append(now - sent)
        self.sent_out[key] = time.perf_counter()  # the echo goes out right after this

    def at_caller(self, payload: str) -> None:
        now = time.perf_counter()
        sent = self.sent_out.pop(payload[:12], None)
        if sent is not None and self.measuring:
            self.agent_to_caller.append(now - sent)


async def _call(
    server_url: str, index: int, calls: int, timings: Timings, stop: asyncio.Event, ready: asyncio.Barrier
) -> None:
    caller = TwilioCaller(server_url, PUBLIC_URL, AUTH_TOKEN, on_media=timings.at_caller, record=False)
    async with caller:
        await caller.call(seconds=0)
        await ready.wait()
        seq = 0
        # Calls are independent: each starts its 20 ms clock at its own phase, not in lockstep.
        next_at = time.perf_counter() + FRAME_S * index / calls
        while not stop.is_set():
            seq += 1
            frame = struct.pack(">HIxxx", index, seq) + TONE[9:]
            payload = base64.b64encode(frame).decode()
            message = caller.media_frame(payload)
            timings.sent_in[payload[:12]] = time.perf_counter()
            await caller.send_raw(message)
            next_at += FRAME_S
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        await caller.stop()


def _ms(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


async def run_load(server_url: str, pid: int, fake: FakeElevenLabs, calls: int, seconds: float) -> dict[str, float]:
    timings = Timings()
    fake.on_user_audio = timings.at_agent
    stop = asyncio.Event()
    ready = asyncio.Barrier(calls + 1)
    async with asyncio.TaskGroup() as group:
        for index in range(calls):
            group.create_task(_call(server_url, index, calls, timings, stop, ready))
        await ready.wait()
        await asyncio.sleep(WARMUP_S)
        timings.measuring = True
        cpu0, wall0, own0 = cpu_seconds(pid), time.perf_counter(), time.process_time()
        await asyncio.sleep(seconds)
        cpu1, wall1, own1 = cpu_seconds(pid), time.perf_counter(), time.process_time()
        timings.measuring = False
        stop.set()
    wall = wall1 - wall0
    user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    return {
        "in_p50": _ms(timings.caller_to_agent, 50),
        "in_p99": _ms(timings.caller_to_agent, 99),
        "out_p50": _ms(timings.agent_to_caller, 50),
        "out_p99": _ms(timings.agent_to_caller, 99),
        "frames": len(timings.caller_to_agent) + len(timings.agent_to_caller),
        "cpu_per_call": (user + system) / wall / calls * 100,
        "user_per_call": user / wall / calls * 100,
        "system_per_call": system / wall / calls * 100,
        "server_cpu": (user + system) / wall * 100,
        "loadgen_cpu": (own1 - own0) / wall * 100,
    }


async def bench(tmp: Path) -> list[tuple[int, dict[str, float]]]:
    results = []
    async with FakeElevenLabs(API_KEY, ENGINE_ID, echo=True, record=False) as fake:
        with bridge_server(tmp, fake.base_url) as (server_url, pid):
            await run_load(server_url, pid, fake, 2, 1.0)  # warm-up: imports, first connections
            idle0, wall0 = sum(cpu_seconds(pid)), time.perf_counter()
            await asyncio.sleep(2)
            idle = (sum(cpu_seconds(pid)) - idle0) / (time.perf_counter() - wall0) * 100
            print(f"\nbridge server idle: {idle:.1f} % of a core")
            for calls in CALLS:
                results.append((calls, await run_load(server_url, pid, fake, calls, SECONDS)))
                r = results[-1][1]
                print(
                    f"bridge, {calls:>3} calls, {SECONDS:.0f} s: "
                    f"caller→agent p50 {r['in_p50']:.2f} ms p99 {r['in_p99']:.2f} ms | "
                    f"agent→caller p50 {r['out_p50']:.2f} ms p99 {r['out_p99']:.2f} ms | "
                    f"server CPU {r['cpu_per_call']:.2f} %/call (user {r['user_per_call']:.2f}, "
                    f"system {r['system_per_call']:.2f}; {r['server_cpu']:.0f} % total) | "
                    f"load generator {r['loadgen_cpu']:.0f} % | {r['frames']} frames timed"
                )
    return results


def test_bridge_latency_and_cpu(tmp_path: Path) -> None:
    results = uvloop.run(bench(tmp_path))  # the load's own scheduling should add as little as it can
    assert all(r["frames"] > 0 for _, r in results)
