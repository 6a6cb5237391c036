"""Checking `Switchboard-Signature` as a receiver would: with the snippet the README gives them."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from app.notify.signature import HEADER
from tests.support.paths import README


def readme_verifier() -> Callable[[bytes, str, str], bool]:
    """The README's receiver snippet, run as a receiver would copy it."""
    snippet = re.search(r"```python\n(import hashlib.*?)```", README.read_text(), re.S)
    assert snippet is not None, "README lost its signature snippet"
    scope: dict[str, Any] = {}
    exec(snippet.group(1), scope)
    return scope["is_from_switchboard"]


def signed_by(request: Any, secret: str) -> bool:
    """A request a test receiver got (`tests.support.receiver.Received`) carries a valid signature."""
    return readme_verifier()(request.body, request.headers[HEADER], secret)
