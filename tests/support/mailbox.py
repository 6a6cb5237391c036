"""An SMTP server for tests: aiosmtpd on a socket the test hands over, keeping every mail."""

from __future__ import annotations

import asyncio
from typing import Any


class Mailbox:
    """An aiosmtpd SMTP server in this event loop: keeps every mail it accepts."""

    def __init__(self) -> None:
        self.mails: list[Any] = []
        self.arrived = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook
        from email import message_from_bytes, policy

        self.mails.append((envelope.rcpt_tos, message_from_bytes(envelope.original_content, policy=policy.default)))
        self.arrived.set()
        return "250 Message accepted for delivery"

    async def start(self, sock: Any) -> None:
        from aiosmtpd.smtp import SMTP

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: SMTP(self, hostname="mail.test"), sock=sock)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
