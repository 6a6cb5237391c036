"""The departments a running server knows, read again when `departments.toml` changes.

Read at start (a file with mistakes refuses the start, every mistake on its own line); then the
file is looked at every RELOAD_EVERY_S, as the index is, and a changed file that reads cleanly
replaces the departments between turns. An edit with mistakes keeps the last good departments
and logs its mistakes, once per edit. The time they are read against comes from the app's clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime

from app.clock import Clock
from app.departments.config import DepartmentsError, parse_departments, read_file
from app.departments.schedule import Department, is_open
from app.settings import Settings

log = logging.getLogger("switchboard.departments")

RELOAD_EVERY_S = 1.0
_NONE = object()


class Directory:
    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.path = settings.departments_file
        self.targets = dict(settings.transfer_targets)
        self.clock = clock
        self.every = RELOAD_EVERY_S
        self.departments: Mapping[str, Department] = {}
        self.version = 0  # grows with every change that took effect
        self._text: str | None = None
        self._refused: object = _NONE  # the last text (or read error) with mistakes: logged once

    @property
    def source(self) -> str:
        return str(self.path) if self.path is not None else "TRANSFER_TARGETS"

    def load(self) -> None:
        """Read the departments now; DepartmentsError (every mistake) if they cannot be used."""
        text = read_file(self.path)
        self.departments = parse_departments(text, self.targets, self.source)
        self._text = text
        self.version += 1
        log.info("departments from %s: %s", self.source, ", ".join(self.departments) or "none")

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await asyncio.to_thread(self.reload)

    def reload(self) -> bool:
        """Take in a changed file; True when the departments changed."""
        try:
            text = read_file(self.path)
        except DepartmentsError as exc:
            return self._refuse(str(exc), exc)
        if text == self._text or text == self._refused:
            return False
        try:
            departments = parse_departments(text, self.targets, self.source)
        except DepartmentsError as exc:
            return self._refuse(text, exc)
        self.departments, self._text, self._refused = departments, text, _NONE
        self.version += 1
        log.info("departments read again from %s: %s", self.source, ", ".join(departments) or "none")
        return True

    def _refuse(self, what: object, exc: DepartmentsError) -> bool:
        if what != self._refused:
            self._refused = what
            log.error("%s has mistakes; the departments stay as they were:", exc.source)
            for line in exc.lines:
                log.error("  %s", line)
        return False

    def now(self, call_sid: str | None = None) -> datetime:
        """The time `call_sid`'s opening hours are read against (None: outside any call)."""
        return self.clock.now(call_sid)

    def get(self, name: str) -> Department | None:
        return self.departments.get(name)

    @property
    def names(self) -> list[str]:
        return list(self.departments)

    def first_open(self, at: datetime) -> Department | None:
        """The first department (in the file's order, then TRANSFER_TARGETS') open at `at`."""
        return next((d for d in self.departments.values() if is_open(d, at)), None)
