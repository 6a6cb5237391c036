"""WORKERS=N: N server processes on this machine, sharing one listening socket on PORT.

The supervisor binds the socket and starts each worker (`python -m app serve --fd N`) with it; the
kernel hands each new connection to a worker that is waiting for one. Each worker is a replica of
its own: its own event loop and its own identity in Redis, which is why WORKERS > 1 needs REDIS_URL.
On SIGTERM or Ctrl-C the supervisor passes SIGTERM on to every worker, each drains its calls, and
the supervisor exits once they all have. A worker that dies otherwise is started again.

The socket is bound with SO_REUSEPORT, so during a deploy on one machine the new supervisor can
start beside the old one before the old one is told to drain.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

log = logging.getLogger("switchboard.workers")

RESTART_BACKOFF_S = 1.0
POLL_S = 0.2


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, workers: int, host: str, port: int) -> None:
        self.count = workers
        self.socket = listening_socket(host, port)
        self.host = host
        self.stopping = False
        self.workers: list[subprocess.Popen[bytes]] = []

    def _start(self) -> subprocess.Popen[bytes]:
        fd = self.socket.fileno()
        command = [sys.executable, "-m", "app", "--host", self.host, "serve", "--fd", str(fd)]
        worker = subprocess.Popen(command, pass_fds=(fd,))
        log.info("worker %d started", worker.pid)
        return worker

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("stopping: the workers drain their calls first")
        self.stopping = True
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        self.workers = [self._start() for _ in range(self.count)]
        while True:
            alive = [w for w in self.workers if w.poll() is None]
            if self.stopping and not alive:
                self.socket.close()
                return 0
            if not self.stopping:
                for n, worker in enumerate(self.workers):
                    if worker.poll() is not None:
                        log.error("worker %d exited (%s); starting another", worker.pid, worker.returncode)
                        time.sleep(RESTART_BACKOFF_S)
                        if not self.stopping:
                            self.workers[n] = self._start()
            time.sleep(POLL_S)


def supervise(workers: int, host: str, port: int) -> int:
    log.info("%d worker processes on port %d (supervisor %d)", workers, port, os.getpid())
    return Supervisor(workers, host, port).run()
