"""What the servers under test and the stand-ins for their peers are configured with."""

from __future__ import annotations

import tomllib

from tests.support.paths import DEPARTMENTS

SECRET = "test-shared-secret"  # the brain WebSocket's x-api-key (SHARED_SECRET)
API_KEY = "sk_test_elevenlabs_key"  # ELEVENLABS_API_KEY: signed URLs and the brain's JWT
ENGINE_ID = "seng_test"
TWILIO_TOKEN = "test-twilio-auth-token"
ACCOUNT_SID = "AC" + "5" * 32
PUBLIC_URL = "https://switchboard.example"
TARGETS = {"sales": "+15551230001", "support": "+15551230002"}  # TRANSFER_TARGETS
UNLISTED = "+19005550199"  # a number no setting names: nothing may ever dial it


def sample_targets() -> str:
    """The sample company's departments (departments.toml: sales, support, billing) as TRANSFER_TARGETS,
    open around the clock: the departments the shipped call scenarios transfer to."""
    departments = tomllib.loads(DEPARTMENTS.read_text(encoding="utf-8"))["departments"]
    return ",".join(f"{name}={department['number']}" for name, department in departments.items())
