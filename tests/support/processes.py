"""Other processes, as the kernel sees them: the one place tests read /proc."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def children(pid: int) -> set[int]:
    """The running children of `pid`."""
    found: set[int] = set()
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found |= {int(child) for child in (task / "children").read_text().split()}
    except FileNotFoundError:  # it ended while we looked
        pass
    return found


def descendants(pid: int) -> set[int]:
    found = children(pid)
    return found | {below for child in found for below in descendants(child)}


def running(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of `pid` and its descendants so far (system time includes loopback
    TCP delivery)."""
    ticks = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for each in {pid} | descendants(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        user, system = user + int(fields[11]) / ticks, system + int(fields[12]) / ticks
    return user, system


def wait_stopped(process: subprocess.Popen[bytes]) -> None:
    """Until a child has stopped itself (SIGSTOP); fails if it exits instead. Leaves it waitable."""
    info = os.waitid(os.P_PID, process.pid, os.WSTOPPED | os.WEXITED | os.WNOWAIT)
    assert info is not None and info.si_code == os.CLD_STOPPED, f"it did not stop: {info}"


def as_a_terminal_starts_it() -> None:
    """In the child before a command starts: Ctrl-C's signal at its default, as a shell leaves it for
    the command it runs in the foreground. A suite started in the background by a shell without job
    control (CI, a long run) has SIGINT ignored, and a child inherits that: Ctrl-C would never reach it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
