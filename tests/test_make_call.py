"""`make call` as a new user runs it: a clean checkout whose `.env` holds only what the first run
writes, the real command in its own process, and nothing left running afterwards, even on Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sys
from pathlib import Path

from tests.support.make_call import COMMAND, environment, run
from tests.support.processes import as_a_terminal_starts_it, descendants, running

GREETING = "Thanks for calling Kestrel Broadband. How can I help?"
ADDRESS = re.compile(r"(?:http|ws)://127\.0\.0\.1:(\d+)")


async def test_a_scripted_call_answers_takes_a_message_and_transfers(checkout: Path) -> None:
    script = [
        "how much is the autopay discount?",
        "I'd like to leave a message",
        "my name is Sam Jones",
        "my number is 415 555 0123",
        "please call me back about my bill",
        "can I talk to someone in sales?",
    ]
    code, out, err = await run(checkout, *COMMAND, *(arg for line in script for arg in ("--say", line)), "--json")
    assert code == 0, err
    call = json.loads(out)
    assert "SHARED_SECRET=" in (checkout / ".env").read_text()  # the first run wrote .env
    assert call["answers_from"] == "the documents alone" and call["greeting"] == GREETING
    turns = call["turns"]
    assert [turn["caller"] for turn in turns] == script
    assert "$5" in turns[0]["agent"] and turns[0]["first_chunk_ms"] >= 0 and turns[0]["tools"] == []
    assert "4 1 5, 5 5 5, 0 1 2 3" in turns[3]["agent"]
    assert turns[4]["tools"] == ["take_message"]
    assert turns[5]["tools"] == ["transfer_call"] and call["ended_by"] == "transfer"
    assert call["transfer"] == {"department": "sales", "number": "+12025550143", "said": ""}

    code, listed, err = await run(checkout, sys.executable, "-m", "app", "messages", "--json")
    assert code == 0, err
    saved = json.loads(listed)
    assert [(m["name"], m["callback_number"], m["message"]) for m in saved] == [
        ("Sam Jones", "+14155550123", "please call me back about my bill")
    ]


async def test_the_quick_start_call_prints_the_conversation(checkout: Path) -> None:
    code, out, err = await run(checkout, *COMMAND, "--say", "how much is the autopay discount?", "--say", "thanks, bye")
    assert code == 0, err
    lines = out.splitlines()
    conversation = [line for line in lines if line.startswith(("agent>", "you>"))]
    assert conversation[0].startswith(f"agent> {GREETING}")
    assert conversation[1] == "you>   how much is the autopay discount?"
    assert "$5" in conversation[2] and "first words" in conversation[2]
    assert conversation[3] == "you>   thanks, bye"
    assert conversation[4].startswith("agent> Thank you for calling Kestrel Broadband. Goodbye.")
    assert lines[-1] == "── the agent hung up"
    assert (checkout / "data" / "call.log").stat().st_size > 0  # the server's log, out of the way


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


async def test_ctrl_c_mid_call_leaves_nothing_running(checkout: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        cwd=checkout,
        env=environment(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=as_a_terminal_starts_it,
    )
    assert process.stdin is not None and process.stdout is not None
    ports: list[int] = []
    try:
        async with asyncio.timeout(90):
            while GREETING not in (line := (await process.stdout.readline()).decode()):
                assert line, "make call ended before the greeting"
                ports += [int(port) for port in ADDRESS.findall(line)]
            process.stdin.write(b"when is my bill due?\n")
            await process.stdin.drain()
            while "first words" not in (line := (await process.stdout.readline()).decode()):
                assert line, "make call ended before answering"
        assert len(ports) == 4  # the server, the Twilio API, ElevenLabs' REST and conversation sockets
        assert all(not refuses(port) for port in ports)
        spawned = descendants(process.pid)
        process.send_signal(signal.SIGINT)  # Ctrl-C, with the call still up
        async with asyncio.timeout(30):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 130
    assert not any(running(pid) for pid in spawned)
    assert all(refuses(port) for port in ports)
