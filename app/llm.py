"""The model: any OpenAI-compatible chat-completions endpoint, streamed, with deadlines.

A phone caller hears silence while we wait, so the first token has a deadline and the stream an
idle limit; retries are off because a retried request would blow the deadline anyway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk

from .settings import Settings


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
                timeout=httpx.Timeout(connect=5.0, read=self.idle_timeout, write=10.0, pool=5.0),
            )

    @property
    def enabled(self) -> bool:
        return self._client is not None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def stream_text(self, messages: list[dict[str, Any]], timing: dict[str, float]) -> AsyncIterator[str]:
        """Yield the answer's text as it arrives; raise LLMError on failure or a missed deadline.

        `timing["llm_first_token_s"]` is set when the first token arrives. Closing the generator
        (interruption) closes the HTTP stream, so the model stops generating for nobody.
        """
        if self._client is None:
            raise LLMError("no model configured", spoke=False)
        started = time.perf_counter()
        spoke = False
        stream = None
        try:
            async with asyncio.timeout(self.first_token_timeout) as deadline:
                # `post` with a ready JSON body is the SDK's own call minus its per-request walk
                # over every message's type annotations, which dominated the brain's CPU per turn.
                stream = await self._client.post(
                    "/chat/completions",
                    body={"model": self.model, "messages": messages, "stream": True},
                    cast_to=ChatCompletionChunk,
                    stream=True,
                    stream_cls=AsyncStream[ChatCompletionChunk],
                )
                chunks = aiter(stream)
                async for chunk in chunks:
                    text = _text_of(chunk)
                    if text:
                        timing["llm_first_token_s"] = time.perf_counter() - started
                        deadline.reschedule(None)
                        spoke = True
                        yield text
                        break
            if not spoke:
                raise LLMError("the model returned no text", spoke=False)
            while True:
                async with asyncio.timeout(self.idle_timeout):
                    chunk = await anext(chunks, None)
                if chunk is None:
                    return
                text = _text_of(chunk)
                if text:
                    yield text
        except TimeoutError as exc:
            reason = "first-token deadline missed" if not spoke else "the model stalled mid-answer"
            raise LLMError(reason, spoke) from exc
        except (openai.OpenAIError, httpx.HTTPError) as exc:
            raise LLMError(f"{type(exc).__name__}: {exc}", spoke) from exc
        finally:
            if stream is not None:
                await stream.close()


def _text_of(chunk: Any) -> str | None:
    choices = getattr(chunk, "choices", None)
    if not choices:
        return None
    delta = getattr(choices[0], "delta", None)
    return getattr(delta, "content", None) if delta is not None else None
