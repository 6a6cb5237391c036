"""Addresses for tests without a race for the port: a socket stays bound for as long as its port is
in use, and a process that serves gets it handed over instead of binding the port again."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from app.testing.live_server import bound_socket


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


@contextmanager
def refusing() -> Iterator[str]:
    """`127.0.0.1:<port>` of a peer that is down: the port is held bound and never listens, so every
    connection to it is refused at once."""
    with bound_socket() as sock:
        yield address(sock)


def listening_socket() -> socket.socket:
    """A listening socket a child process can inherit (`python -m app serve --fd N`, nginx): the port
    accepts connections from now on, queued until the process takes them."""
    sock = bound_socket()
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def shared_port() -> socket.socket:
    """A port held for a process that binds it itself with SO_REUSEPORT (`python -m app` with WORKERS):
    bound, not listening, so nothing else can take the port and connections are refused until that
    process listens."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    return sock
