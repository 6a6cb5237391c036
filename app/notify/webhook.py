"""One signed POST, bounded in time as a whole (a receiver that trickles its answer is cut off too)."""

from __future__ import annotations

import asyncio

import httpx

from app.notify.events import Sent
from app.notify.signature import signed_json

USER_AGENT = "Switchboard-Webhooks/1"
ANSWER_BYTES = 1024


class WebhookSender:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        # No redirects (a 3xx is a failure, as payment providers treat it) and no proxy from the environment.
        self.client = httpx.AsyncClient(follow_redirects=False, trust_env=False, headers={"User-Agent": USER_AGENT})

    async def send(self, url: str, body: bytes, timeout: float) -> Sent:
        headers = signed_json(self.secret, body)
        try:
            async with asyncio.timeout(timeout):
                async with self.client.stream("POST", url, content=body, headers=headers, timeout=timeout) as response:
                    answer = bytearray()
                    async for chunk in response.aiter_raw():
                        answer += chunk
                        if len(answer) >= ANSWER_BYTES:
                            break
        except TimeoutError:
            return Sent(None, f"no answer within {timeout:g} s")
        except httpx.HTTPError as exc:
            return Sent(None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'failed'}")
        status = response.status_code
        text = answer[:ANSWER_BYTES].decode("utf-8", "replace").strip()
        return Sent(status, None if 200 <= status < 300 else f"HTTP {status}", text)

    async def aclose(self) -> None:
        await self.client.aclose()
