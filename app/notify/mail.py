"""New messages as short plain-text e-mails, through SMTP_URL.

`smtp://user:password@host:587`: STARTTLS whenever the server offers it; a password is only ever sent
over TLS (a server that offers no STARTTLS is refused, and the mail retried like a failed webhook).
Without user and password, a plain relay is used as it is (a local MTA on port 25). `smtps://` is
TLS from the first byte (port 465). The sender is `?from=address` in the URL, else the user name
when it is an address, else switchboard@ the host of PUBLIC_URL.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

from app.notify.events import Sent


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    implicit_tls: bool
    username: str | None
    password: str | None
    sender: str

    @classmethod
    def from_url(cls, url: str, public_url: str | None) -> SmtpServer:
        parts = urlsplit(url)
        implicit = parts.scheme == "smtps"
        username = unquote(parts.username) if parts.username else None
        sender = parse_qs(parts.query).get("from", [""])[0]
        if not sender:
            domain = urlsplit(public_url).hostname if public_url else None
            sender = username if username and "@" in username else f"switchboard@{domain or 'localhost'}"
        return cls(
            host=parts.hostname or "",
            port=parts.port or (465 if implicit else 587),
            implicit_tls=implicit,
            username=username,
            password=unquote(parts.password) if parts.password else None,
            sender=sender,
        )


class MailSender:
    def __init__(self, smtp_url: str, to: list[str], public_url: str | None) -> None:
        self.server = SmtpServer.from_url(smtp_url, public_url)
        self.to = to
        self.public_url = public_url

    def _mail(self, event_id: str, subject: str, text: str) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.server.sender
        mail["To"] = ", ".join(self.to)
        mail["Subject"] = subject
        # Stable across retries, so a mail that did arrive before a failure was seen is one mail to clients.
        mail["Message-ID"] = f"<{event_id}@switchboard>"
        mail.set_content(text)
        return mail

    def message_mail(self, event_id: str, data: dict[str, Any]) -> EmailMessage:
        for_whom = f" for {data['department']}" if data.get("department") else ""
        lines = [
            f"{data['name']} left a message{for_whom} at {data['left_at'].replace('T', ' ')[:16]} UTC.",
            "",
            f"Call back: {data['callback_number']}",
            "",
            data["message"],
        ]
        if data.get("call_sid"):
            link = f"{self.public_url}/admin/calls/{data['call_sid']}" if self.public_url else data["call_sid"]
            lines += ["", f"The call: {link}"]
        return self._mail(event_id, f"Message from {data['name']} ({data['callback_number']})", "\n".join(lines))

    def ping_mail(self, event_id: str) -> EmailMessage:
        return self._mail(event_id, "Switchboard test e-mail", "Switchboard can e-mail you: new messages come here.")

    async def send(self, mail: EmailMessage, timeout: float) -> Sent:
        server = self.server
        smtp = aiosmtplib.SMTP(
            hostname=server.host, port=server.port, use_tls=server.implicit_tls, start_tls=False, timeout=timeout
        )
        try:
            async with asyncio.timeout(timeout):
                await smtp.connect()
                await smtp.ehlo()
                if not server.implicit_tls and smtp.supports_extension("starttls"):
                    await smtp.starttls()
                if server.username:
                    if smtp.get_transport_info("sslcontext") is None:
                        return Sent(None, "the SMTP server offers no STARTTLS: the password is not sent in clear")
                    await smtp.login(server.username, server.password or "")
                refused, reply = await smtp.send_message(mail)
                await smtp.quit()
        except TimeoutError:
            return Sent(None, f"no answer from the SMTP server within {timeout:g} s")
        except (aiosmtplib.SMTPException, OSError) as exc:
            return Sent(None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'failed'}")
        finally:
            smtp.close()
        if refused:
            return Sent(250, None, f"{reply} (refused: {', '.join(sorted(refused))})")
        return Sent(250, None, reply)
