"""Real servers for tests, from Debian's packages, each a throwaway instance, and `python -m app` as
a process.

No port is picked and then bound again by someone else: PostgreSQL and Redis listen on Unix sockets
in their own temporary directories (so a test can stop one and start it again at the same address),
nginx and `python -m app` are handed a socket this process bound and keeps.

PostgreSQL runs in its own cluster under a temporary directory (as the `postgres` user when the
tests run as root, which PostgreSQL refuses). When a server is not installed the tests that need it
are skipped, unless REQUIRE_TEST_SERVERS=1 (as `.ci/run` sets), where a missing server fails them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.ports import listening_socket, shared_port
from tests.support.waiting import until


def missing(what: str) -> None:
    """Skip the test, or fail it where the servers are required (CI)."""
    message = f"{what} is not installed (apt-get install it; .ci/run does)"
    if os.environ.get("REQUIRE_TEST_SERVERS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]), reverse=True)
    if found:
        return found[0].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Postgres:
    """One cluster: `url(db)` for a database in it, `stop()`/`start()` to take it away and back."""

    PORT = 5432  # names the socket file in `root`; no TCP port is opened

    def __init__(self, bin_dir: Path, root: Path, user: str | None) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self._user = user
        self.data = root / "data"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._user:
            command = ["runuser", "-u", self._user, "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=60)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        """Returns once it accepts connections (pg_ctl -w waits for that)."""
        options = f"-p {self.PORT} -k {self.root} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "-t", "60", "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)

    def create_database(self, name: str) -> str:
        self._run(
            "psql", "-h", str(self.root), "-p", str(self.PORT), "-U", "postgres", "-c", f'CREATE DATABASE "{name}"'
        )
        return self.url(name)

    def url(self, name: str) -> str:
        return f"postgresql://postgres@/{name}?host={self.root}&port={self.PORT}"


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    bin_dir = _postgres_bin()
    if bin_dir is None:
        missing("PostgreSQL")
    assert bin_dir is not None
    user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="switchboard-pg-"))
    if user:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    server = Postgres(bin_dir, root, user)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# --- Redis ------------------------------------------------------------------------------------------


class RedisServer:
    """redis-server without persistence: a restart comes back empty, as after losing the machine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def start(self, timeout: float = 20.0) -> None:
        """Returns once it accepts connections: it says so the way it tells systemd (READY=1)."""
        notify_path = self.root / "notify"
        notify_path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            notify.settimeout(timeout)
            self.process = subprocess.Popen(
                ["redis-server", "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                 "--save", "", "--appendonly", "no", "--dir", str(self.root), "--logfile", str(self.root / "log"),
                 "--supervised", "systemd"],
                env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
            )  # fmt: skip
            while b"READY=1" not in notify.recv(4096):
                pass

    def answering(self) -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(0.5)
            try:
                s.connect(str(self.socket))
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        missing("redis-server")
    root = Path(tempfile.mkdtemp(prefix="switchboard-redis-"))
    server = RedisServer(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# --- nginx ------------------------------------------------------------------------------------------

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream switchboard {{ {servers} }}
    {pinned}
    # Tests only: `X-Replica: <n>` pins a request to one replica; without it, round robin.
    map $http_x_replica $backend {{ default switchboard; {pins} }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://$backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 3600s;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


@contextmanager
def nginx_in_front(ports: list[int]) -> Iterator[str]:
    """nginx round robin over the replicas on `ports`; yields its http URL. It is handed its listening
    socket (nginx takes over sockets named in $NGINX, as on a binary upgrade), so it is reachable at once."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        missing("nginx")
    assert nginx is not None
    root = Path(tempfile.mkdtemp(prefix="switchboard-nginx-"))
    conf = root / "nginx.conf"
    with listening_socket() as sock:
        port = sock.getsockname()[1]
        conf.write_text(
            NGINX_CONF.format(
                root=root,
                port=port,
                servers=" ".join(f"server 127.0.0.1:{p};" for p in ports),
                pinned=" ".join(f"upstream replica_{n} {{ server 127.0.0.1:{p}; }}" for n, p in enumerate(ports)),
                pins=" ".join(f"{n} replica_{n};" for n in range(len(ports))),
            )
        )
        process = subprocess.Popen(
            [nginx, "-c", str(conf), "-p", str(root)],
            env={**os.environ, "NGINX": f"{sock.fileno()};"},
            pass_fds=(sock.fileno(),),
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


# --- the product itself, as a process -------------------------------------------------------------


class AppProcess:
    """`python -m app`, as an operator runs it: its own process, its own signals.

    It serves on a listening socket bound here and handed over (`serve --fd`, as the WORKERS supervisor
    hands its socket to each worker), kept across a restart. With WORKERS the supervisor binds PORT
    itself (SO_REUSEPORT), and the port is held here meanwhile."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.cwd = cwd
        supervised = int(env.get("WORKERS") or 1) > 1
        self.sock = shared_port() if supervised else listening_socket()
        self.port = self.sock.getsockname()[1]
        self.env = {**os.environ, **env, "PORT": str(self.port)}
        self.command = [sys.executable, "-m", "app", "--host", "127.0.0.1"]
        self.handed: tuple[int, ...] = ()
        if not supervised:
            self.handed = (self.sock.fileno(),)
            self.command += ["serve", "--fd", str(self.sock.fileno())]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, ready_path: str = "/readyz", timeout: float = 120) -> None:
        """Start it (again, after it ended) and return once `ready_path` answers 200."""
        # A Popen, not an asyncio subprocess: tests signal and reap it from any thread.
        self.process = subprocess.Popen(self.command, env=self.env, cwd=self.cwd, pass_fds=self.handed)  # noqa: ASYNC220

        async def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, "python -m app exited"
            return await self.status(ready_path) == 200

        await until(ready, timeout=timeout, what=f"python -m app ready ({ready_path})", every=0.1)

    async def status(self, path: str = "/readyz") -> int | None:
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"{self.url}{path}", timeout=2)).status_code
        except httpx.TransportError:
            return None

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.sock.close()
