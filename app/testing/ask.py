"""`make ask Q="..."`: put a question to the running server's /ws exactly as ElevenLabs would.

Prints the answer as it streams, then the time to first chunk and the total time.
"""

from __future__ import annotations

import asyncio
import sys
import time

from app.settings import load_settings
from app.testing.speech_engine import SpeechEngineClient


async def ask(question: str) -> int:
    settings = load_settings()
    url = f"ws://127.0.0.1:{settings.port}/ws"
    try:
        client = await SpeechEngineClient.open(
            url, api_key=settings.secret("elevenlabs_api_key"), shared_secret=settings.secret("shared_secret")
        )
    except OSError as exc:
        print(f"cannot reach {url}: {exc} (is `make run` running?)", file=sys.stderr)
        return 1
    async with client:
        await client.init("conv_make_ask")
        started = time.perf_counter()
        event_id = await client.say(question)
        printed = 0
        answer = client.answers[event_id]
        async with asyncio.timeout(60):
            while not answer.finals:
                await client.wait_for(lambda seen=printed: len(answer.chunks) > seen or answer.finals, timeout=60)
                for chunk in answer.chunks[printed:]:
                    print(chunk, end="", flush=True)
                printed = len(answer.chunks)
        total = time.perf_counter() - started
        first = answer.first_chunk_s
        first_ms = f"{first * 1000:.0f} ms" if first is not None else "n/a"
        print(f"\n\n[first chunk {first_ms}, total {total * 1000:.0f} ms]")
    return 0


def main() -> None:
    question = " ".join(sys.argv[1:]).strip()
    if not question:
        sys.exit('usage: make ask Q="what are your opening hours?"')
    sys.exit(asyncio.run(ask(question)))


if __name__ == "__main__":
    main()
