"""Telling the team: the outbox's events sent as signed webhooks and e-mail, retried through outages."""
