"""One try at one destination: a signed POST to a webhook, or an e-mail."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from app.notify import events
from app.notify.events import Sent
from app.notify.mail import MailSender
from app.notify.webhook import WebhookSender
from app.records.outbox import Destination
from app.settings import Settings

if TYPE_CHECKING:
    from app.notify.delivery import DeliveryTimings


class Senders:
    def __init__(self, settings: Settings) -> None:
        secret = settings.secret("notify_webhook_secret")
        smtp_url = settings.secret("smtp_url")
        self.webhooks = WebhookSender(secret) if secret else None
        self.mail = (
            MailSender(smtp_url, settings.notify_email_to, settings.public_url)
            if smtp_url and settings.email_enabled
            else None
        )

    async def send(
        self,
        destination: Destination,
        event_id: str,
        event_type: str,
        created_at: datetime,
        data: dict[str, Any],
        timings: DeliveryTimings,
    ) -> Sent:
        if destination.kind == "email":
            if self.mail is None:
                return Sent(None, "e-mail is not configured here (NOTIFY_EMAIL_TO, SMTP_URL)")
            if event_type == events.PING:
                mail = self.mail.ping_mail(event_id)
            else:
                mail = self.mail.message_mail(event_id, data)
            return await self.mail.send(mail, timings.mail_timeout)
        if self.webhooks is None:
            return Sent(None, "NOTIFY_WEBHOOK_SECRET is not set here: nothing is sent unsigned")
        body = events.body(event_id, event_type, created_at, data)
        return await self.webhooks.send(destination.address, body, timings.send_timeout)

    async def aclose(self) -> None:
        if self.webhooks is not None:
            await self.webhooks.aclose()
