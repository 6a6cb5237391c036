"""What the servers under test and the stand-ins for their peers are configured with."""

from __future__ import annotations

import re

from tests.support.paths import ENV_EXAMPLE

SECRET = "test-shared-secret"  # the brain WebSocket's x-api-key (SHARED_SECRET)
API_KEY = "sk_test_elevenlabs_key"  # ELEVENLABS_API_KEY: signed URLs and the brain's JWT
ENGINE_ID = "seng_test"
TWILIO_TOKEN = "test-twilio-auth-token"
ACCOUNT_SID = "AC" + "5" * 32
PUBLIC_URL = "https://switchboard.example"
TARGETS = {"sales": "+15551230001", "support": "+15551230002"}  # TRANSFER_TARGETS
UNLISTED = "+19005550199"  # a number no setting names: nothing may ever dial it


def sample_targets() -> str:
    """TRANSFER_TARGETS as .env.example ships it for the sample company (sales, support, billing):
    the departments the shipped call scenarios transfer to."""
    found = re.search(r"(?m)^TRANSFER_TARGETS=(.+)$", ENV_EXAMPLE.read_text(encoding="utf-8"))
    assert found is not None, ".env.example sets TRANSFER_TARGETS"
    return found.group(1).strip()
