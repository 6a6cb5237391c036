"""The fake model in a test's settings, and what a request to it carried."""

from __future__ import annotations

from typing import Any

from app.brain.prompt import REFERENCE_CLOSE, REFERENCE_OPEN
from app.testing.fake_openai import FakeOpenAI


def model_settings(fake: FakeOpenAI, **extra: object) -> dict[str, object]:
    """Settings that point the brain at the fake OpenAI-compatible server."""
    return {"openai_base_url": fake.base_url, "openai_model": "fake-model", "openai_api_key": "sk-fake", **extra}


def reference_of(request: Any) -> str:
    """The reference block (the passages) the model was given in a request."""
    block = next(m["content"] for m in request.messages if m["content"].startswith(REFERENCE_OPEN))
    assert block.endswith(REFERENCE_CLOSE)
    return block
