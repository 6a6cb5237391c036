"""An OpenAI-compatible chat-completions server on 127.0.0.1 that streams SSE as the real one does.

Each reply can be told to wait before its first token, pace its tokens, fail with an HTTP error,
cut the connection mid-stream, or stream tool calls in pieces. Every request is recorded with
whether the client hung up before the stream finished.

A request without `"stream": true` gets one `chat.completion` object, as OpenAI answers it. Its
`response_format` is checked as OpenAI checks it: `json_schema` needs a name and a schema, and a
strict schema must follow strict mode's rules (every object lists all its properties in `required`
and sets `additionalProperties: false`; only the keywords strict mode supports), or the request is
refused with 400 `invalid_request_error`. Such structured-output requests are scripted
(`queue_structured`) and recorded (`structured_requests`) apart from the conversation's; unscripted,
one is answered with JSON that fits the schema (the first value of each enum, empty strings, false,
0, null where allowed), and a test scripts anything else, invalid JSON included, with `Reply.text`.

Run alone (for benchmarks, in its own process):
    python -m app.testing.fake_openai --port 0 --first-token-delay 0.2 --port-file PATH
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop


@dataclass
class Reply:
    tokens: list[str] = field(default_factory=lambda: ["Hello", " from", " the", " model."])
    first_token_delay: float = 0.0
    inter_token_delay: float = 0.0
    status: int = 200
    disconnect_after: int | None = None  # tokens sent before the connection is cut
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (name, JSON arguments)

    @classmethod
    def text(cls, text: str, **kw: Any) -> Reply:
        words = text.split(" ")
        return cls(tokens=[w if i == 0 else f" {w}" for i, w in enumerate(words)], **kw)


@dataclass
class Recorded:
    body: dict[str, Any]
    received_at: float
    finished: bool = False
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])


def echo(body: dict[str, Any]) -> Reply:
    """Default behaviour: repeat the caller's last words back, in a few tokens; for a JSON schema
    request, an answer that fits the schema."""
    schema = _json_schema(body)
    if schema is not None:
        return Reply(tokens=[json.dumps(fitting(schema))])
    last = next((m.get("content") for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
    return Reply.text(f"You asked: {last}. Thank you for calling.")


def fitting(schema: dict[str, Any]) -> Any:
    """A plain value that fits `schema` (strict mode's subset of JSON Schema)."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    kind = next((k for k in kind if k != "null"), "null") if isinstance(kind, list) else kind
    if kind == "object":
        return {name: fitting(sub) for name, sub in schema.get("properties", {}).items()}
    return {"string": "", "boolean": False, "number": 0, "integer": 0, "array": [], "null": None}.get(kind)


# Strict mode's keywords (OpenAI's structured outputs guide); anything else in a strict schema is refused.
_STRICT_KEYWORDS = frozenset(
    {"type", "properties", "required", "additionalProperties", "enum", "const", "description", "items", "anyOf",
     "$defs", "$ref", "title", "pattern", "format", "minimum", "maximum", "minItems", "maxItems"}
)  # fmt: skip
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _json_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    wanted = body.get("response_format")
    if isinstance(wanted, dict) and wanted.get("type") == "json_schema":
        inner = wanted.get("json_schema")
        return inner.get("schema") if isinstance(inner, dict) else None
    return None


def response_format_problem(body: dict[str, Any]) -> str | None:
    """Why OpenAI would refuse this request's `response_format`, or None."""
    wanted = body.get("response_format")
    if wanted is None:
        return None
    if not isinstance(wanted, dict) or wanted.get("type") not in ("text", "json_object", "json_schema"):
        return "response_format.type must be one of text, json_object, json_schema"
    if wanted["type"] != "json_schema":
        return None
    inner = wanted.get("json_schema")
    if not isinstance(inner, dict) or not isinstance(inner.get("name"), str) or not _NAME.match(inner["name"]):
        return "response_format.json_schema.name is required: letters, digits, _ or -, up to 64"
    schema = inner.get("schema")
    if not isinstance(schema, dict):
        return "response_format.json_schema.schema must be an object"
    if inner.get("strict") is True:
        if schema.get("type") != "object":
            return f"Invalid schema for response_format '{inner['name']}': the root must be an object"
        problem = _strict_problem(schema, "root")
        if problem:
            return f"Invalid schema for response_format '{inner['name']}': {problem}"
    return None


def _strict_problem(schema: Any, where: str) -> str | None:
    if not isinstance(schema, dict):
        return f"{where} must be a schema object"
    unknown = set(schema) - _STRICT_KEYWORDS
    if unknown:
        return f"In context={where}, '{sorted(unknown)[0]}' is not permitted"
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "object" in kinds:
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") is not False:
            return f"In context={where}, 'additionalProperties' is required to be supplied and to be false"
        if sorted(schema.get("required", [])) != sorted(properties):
            return (
                f"In context={where}, 'required' is required to be supplied and to be an array including every "
                "key in properties"
            )
        for name, sub in properties.items():
            problem = _strict_problem(sub, f"{where}.{name}")
            if problem:
                return problem
    if "array" in kinds and "items" in schema:
        return _strict_problem(schema["items"], f"{where}.items")
    return None


class FakeOpenAI:
    def __init__(self, responder: Callable[[dict[str, Any]], Reply] = echo) -> None:
        self.responder = responder
        self.script: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        self.request_seen = asyncio.Event()
        # Structured-output requests (a JSON schema: post-call analysis) are scripted and recorded
        # apart from the conversation's, so scripting one never takes the other's replies.
        self.structured_script: deque[Reply] = deque()
        self.structured_requests: list[Recorded] = []
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def queue(self, *replies: Reply) -> None:
        """The next requests get these replies, in order, before falling back to the responder."""
        self.script.extend(replies)

    def queue_structured(self, *replies: Reply) -> None:
        """The next structured-output requests get these replies, in order."""
        self.structured_script.extend(replies)

    async def start(self, port: int = 0) -> FakeOpenAI:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()

    async def __aenter__(self) -> FakeOpenAI:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                path, body = request
                if not path.endswith("/chat/completions"):
                    await _respond(writer, 404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                    continue
                if not await self._complete(reader, writer, body):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _complete(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
        """Stream one reply; returns False when the connection must not be reused."""
        recorded = Recorded(body, time.perf_counter())
        structured = _json_schema(body) is not None
        script = self.structured_script if structured else self.script
        if structured:
            self.structured_requests.append(recorded)
        else:
            self.requests.append(recorded)
            self.request_seen.set()
        problem = response_format_problem(body)
        if problem is not None:
            error = {"message": problem, "type": "invalid_request_error", "param": "response_format", "code": None}
            await _respond(writer, 400, {"error": error})
            return True
        reply = script.popleft() if script else self.responder(body)
        if reply.status != 200:
            await _respond(writer, reply.status, {"error": {"message": "scripted failure", "type": "server_error"}})
            return True
        if body.get("stream") is not True:
            if reply.first_token_delay:
                await asyncio.sleep(reply.first_token_delay)
            await _respond(writer, 200, _completion(body.get("model", "fake"), reply))
            recorded.finished = True
            return True
        # While we stream, a read that returns EOF means the client hung up.
        watcher = asyncio.create_task(reader.read(1))
        try:
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            await writer.drain()
            for index, event in enumerate(_events(body.get("model", "fake"), reply)):
                delay = reply.first_token_delay if index == 1 else reply.inter_token_delay if index > 1 else 0
                if delay:
                    done, _ = await asyncio.wait({watcher}, timeout=delay)
                    if done:
                        recorded.hung_up.set()
                        return False
                if reply.disconnect_after is not None and index > reply.disconnect_after:
                    writer.transport.abort()
                    return False
                _write_chunk(writer, f"data: {json.dumps(event)}\n\n".encode())
                await writer.drain()
                if watcher.done():
                    recorded.hung_up.set()
                    return False
            _write_chunk(writer, b"data: [DONE]\n\n")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            recorded.finished = True
            return True
        except ConnectionError:
            recorded.hung_up.set()
            return False
        finally:
            if not watcher.done():
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            elif not recorded.finished and not watcher.cancelled() and watcher.result() == b"":
                recorded.hung_up.set()


def _events(model: str, reply: Reply) -> list[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": token}) for token in reply.tokens]
    for index, (name, arguments) in enumerate(reply.tool_calls):
        events.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": f"call_{index}",
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
        )
        # Real servers stream arguments in small pieces; so do we.
        for start in range(0, len(arguments), 7):
            piece = arguments[start : start + 7]
            events.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    events.append(chunk({}, "tool_calls" if reply.tool_calls else "stop"))
    return events


def _completion(model: str, reply: Reply) -> dict[str, Any]:
    """The whole answer as one `chat.completion`, as OpenAI answers a request that does not stream."""
    message: dict[str, Any] = {"role": "assistant", "content": "".join(reply.tokens), "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
            for i, (name, arguments) in enumerate(reply.tool_calls)
        ]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if reply.tool_calls else "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": len(reply.tokens), "total_tokens": len(reply.tokens)},
    }


def _write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, Any]] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    _method, path, _version = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    raw = await reader.readexactly(int(headers.get("content-length", "0")))
    return path, json.loads(raw) if raw else {}


async def _respond(writer: asyncio.StreamWriter, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    writer.write(
        f"HTTP/1.1 {status} Scripted\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--inter-token-delay", type=float, default=0.0)
    parser.add_argument("--port-file", type=Path)
    args = parser.parse_args()

    def paced(body: dict[str, Any]) -> Reply:
        reply = echo(body)
        reply.first_token_delay = args.first_token_delay
        reply.inter_token_delay = args.inter_token_delay
        return reply

    fake = await FakeOpenAI(paced).start(args.port)
    if args.port_file:
        args.port_file.write_text(str(fake.port))
    print(f"fake OpenAI on {fake.base_url}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_main())  # the stand-in's own overhead should not count as the brain's
