"""The model: any OpenAI-compatible chat-completions endpoint, streamed, with deadlines.

A phone caller hears silence while we wait, so the first token has a deadline and the stream an
idle limit; retries are off because a retried request would blow the deadline anyway.

Tool calls arrive as streamed deltas (by index: id and name first, arguments in pieces, as OpenAI,
vLLM, llama.cpp and Ollama send them); they are assembled here, bounded in number and size, and
handed back once the stream ends. What they ask for is decided elsewhere (`tools`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import openai
from openai import AsyncOpenAI, AsyncStream

from app.settings import Settings

MAX_TOOL_CALLS = 4  # per model round; more are dropped
MAX_TOOL_ARGUMENT_CHARS = 4000
MAX_TOOL_NAME_CHARS = 64


@dataclass(frozen=True)
class ToolCall:
    """One tool call as the model sent it (untrusted); `error` when it could not be taken as sent."""

    id: str
    name: str
    arguments: str
    error: str | None = None

    def message(self) -> dict[str, Any]:
        """This call as it goes back to the model in the assistant message."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class _ToolCallParts:
    """Streamed tool-call deltas, assembled by index."""

    def __init__(self) -> None:
        self._calls: dict[int, list[Any]] = {}  # index -> [id, name, argument pieces, size]
        self.dropped = 0

    def __bool__(self) -> bool:
        return bool(self._calls) or bool(self.dropped)

    def add(self, deltas: Sequence[Any]) -> None:
        for delta in deltas:
            if not isinstance(delta, dict):
                continue
            index = delta.get("index")
            call_id = delta.get("id")
            if not isinstance(index, int):
                # Some servers omit the index: a new id starts a new call, anything else continues the last.
                last = max(self._calls, default=-1)
                index = last + 1 if last < 0 or (call_id and call_id != self._calls[last][0]) else last
            entry = self._calls.get(index)
            if entry is None:
                if len(self._calls) >= MAX_TOOL_CALLS:
                    self.dropped += 1
                    continue
                entry = self._calls[index] = [None, None, [], 0]
            function = delta.get("function")
            function = function if isinstance(function, dict) else {}
            name = function.get("name")
            arguments = function.get("arguments")
            if entry[0] is None and isinstance(call_id, str) and call_id:
                entry[0] = call_id[:64]
            if entry[1] is None and isinstance(name, str) and name:
                entry[1] = name
            if isinstance(arguments, str) and arguments and entry[3] <= MAX_TOOL_ARGUMENT_CHARS:
                entry[2].append(arguments)
                entry[3] += len(arguments)

    def calls(self, prefix: str) -> list[ToolCall]:
        calls = []
        for index, (call_id, name, pieces, size) in sorted(self._calls.items()):
            call_id = call_id or f"{prefix}_{index}"
            error = None
            if not name or len(name) > MAX_TOOL_NAME_CHARS:
                name, error = (name or "")[:MAX_TOOL_NAME_CHARS] or "unnamed", "the tool call had no valid name"
            arguments = "".join(pieces)
            if size > MAX_TOOL_ARGUMENT_CHARS:
                arguments, error = "{}", f"the arguments were longer than {MAX_TOOL_ARGUMENT_CHARS} characters"
            calls.append(ToolCall(call_id, name, arguments, error))
        return calls


class LLMError(Exception):
    """The model failed or missed a deadline; `spoke` says whether any text already went out."""

    def __init__(self, reason: str, spoke: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.spoke = spoke


class LLM:
    def __init__(self, settings: Settings) -> None:
        self.model = settings.openai_model
        self.first_token_timeout = settings.llm_first_token_timeout
        self.idle_timeout = settings.llm_idle_timeout
        self._client: AsyncOpenAI | None = None
        if settings.llm_enabled:
            self._client = AsyncOpenAI(
                # Local servers (vLLM, Ollama, llama.cpp) take any key; the SDK insists on one.
                api_key=settings.secret("openai_api_key") or "not-needed",
                base_url=settings.openai_base_url,
                max_retries=0,
                # aiohttp under the SDK: half httpx's per-request cost, which is on every turn's first token.
                http_client=openai.DefaultAioHttpClient(),
                timeout=openai.Timeout(connect=5.0, read=self.idle_timeout, write=10.0, pool=5.0),
            )

    @property
    def enabled(self) -> bool:
        return self._client is not None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def stream_text(
        self,
        messages: list[dict[str, Any]],
        timing: dict[str, float],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
        tool_calls: list[ToolCall] | None = None,
        call_prefix: str = "call",
        allow_empty: bool = False,
    ) -> AsyncIterator[str]:
        """Yield the answer's text as it arrives; raise LLMError on failure or a missed deadline.

        With `tools`, the round's tool calls are appended to `tool_calls` once the stream ends.
        `allow_empty`: a round after tool calls may rightly say nothing; otherwise that is an error.
        `timing["llm_first_token_s"]` is set when the first token (text or tool call) of the turn
        arrives. Closing the generator (interruption) closes the HTTP stream, so the model stops
        generating for nobody.
        """
        if self._client is None:
            raise LLMError("no model configured", spoke=False)
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
        if tools:
            body["tools"] = tools
            if tool_choice:
                body["tool_choice"] = tool_choice
        parts = _ToolCallParts() if tools and tool_calls is not None else None
        started = time.perf_counter()
        spoke = False
        stream = None
        text = None
        try:
            async with asyncio.timeout(self.first_token_timeout) as deadline:
                # `post` with a ready JSON body, chunks left as parsed JSON: the SDK's own call minus
                # its walk over every message's type annotations and a model built per chunk, which
                # together were most of the brain's CPU per turn.
                stream = await self._client.post(
                    "/chat/completions", body=body, cast_to=object, stream=True, stream_cls=AsyncStream[object]
                )
                chunks = aiter(stream)
                async for chunk in chunks:
                    text = _take(chunk, parts)
                    if text or parts:
                        timing.setdefault("llm_first_token_s", time.perf_counter() - started)
                        deadline.reschedule(None)
                        break
            if text:
                spoke = True
                yield text
            elif not parts:
                if allow_empty:
                    return
                raise LLMError("the model returned no text", spoke=False)
            while True:
                async with asyncio.timeout(self.idle_timeout):
                    chunk = await anext(chunks, None)
                if chunk is None:
                    break
                text = _take(chunk, parts)
                if text:
                    spoke = True
                    yield text
            if parts is not None and tool_calls is not None:
                tool_calls.extend(parts.calls(call_prefix))
        except TimeoutError as exc:
            reason = "first-token deadline missed" if not spoke else "the model stalled mid-answer"
            raise LLMError(reason, spoke) from exc
        except openai.OpenAIError as exc:  # the SDK wraps transport errors, mid-stream ones included
            raise LLMError(f"{type(exc).__name__}: {exc}", spoke) from exc
        finally:
            if stream is not None:
                await stream.close()

    async def complete(self, messages: list[dict[str, Any]], response_format: dict[str, Any], timeout: float) -> str:
        """One whole answer's text, not streamed, in `response_format` (a JSON schema): for work off
        the call's path, such as post-call analysis. LLMError when it fails or refuses."""
        if self._client is None:
            raise LLMError("no model configured", spoke=False)
        try:
            answer = await self._client.chat.completions.create(
                model=self.model or "",
                messages=messages,
                response_format=response_format,
                timeout=timeout,  # type: ignore[arg-type]
            )
        except openai.OpenAIError as exc:
            raise LLMError(f"{type(exc).__name__}: {exc}", spoke=False) from exc
        message = answer.choices[0].message if answer.choices else None
        refusal = getattr(message, "refusal", None)
        if message is None or refusal:
            raise LLMError(f"the model gave no answer: {refusal or 'no choices'}", spoke=False)
        return message.content or ""


def _take(chunk: Any, parts: _ToolCallParts | None) -> str | None:
    """The chunk's text; its tool-call deltas (if any, and if tools were offered) go to `parts`.

    Chunks are the server's JSON as parsed, untrusted: anything not shaped as expected is no text.
    """
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        return None
    delta = choices[0].get("delta")
    if not isinstance(delta, dict):
        return None
    if parts is not None:
        deltas = delta.get("tool_calls")
        if deltas and isinstance(deltas, list):
            parts.add(deltas)
    content = delta.get("content")
    return content if isinstance(content, str) else None
