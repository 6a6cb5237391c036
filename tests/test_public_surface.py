"""What the server shows to whom: readiness details and metrics to this machine only (or to a bearer of
METRICS_TOKEN), nothing internal to a client outside, which the test makes in a network namespace
of its own (a veth pair with private addresses) so no traffic leaves this machine."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app import create_app
from app.testing.live_server import LiveServer
from tests.support.make_call import COMMAND, run
from tests.support.paths import ENV_EXAMPLE, KNOWLEDGE
from tests.support.servers import missing, nginx_in_front

TOKEN = "metrics-token-for-tests"
ASK_FROM_OUTSIDE = """
import json, sys, httpx
base, token = sys.argv[1], sys.argv[2]
seen = {}
with httpx.Client(timeout=10, trust_env=False) as http:
    for name, path, headers in [
        ("readyz", "/readyz", {}),
        ("metrics", "/metrics", {}),
        ("metrics_wrong_token", "/metrics", {"Authorization": "Bearer not-the-token"}),
        ("metrics_token", "/metrics", {"Authorization": "Bearer " + token}),
    ]:
        answer = http.get(base + path, headers=headers)
        seen[name] = [answer.status_code, answer.text[:2000]]
print(json.dumps(seen))
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 in 10.0.0.0/8 that no interface of this machine uses."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    taken = [ipaddress.ip_interface(word).network for word in used.split() if "/" in word and word[0].isdigit()]
    while True:
        net = ipaddress.ip_network(
            f"10.{random.randint(100, 250)}.{random.randint(0, 255)}.{4 * random.randint(0, 63)}/30"
        )
        if not any(net.overlaps(other) for other in taken):
            return net


@contextlib.contextmanager
def outside() -> Iterator[tuple[str, str]]:
    """A network namespace joined to this one by a veth pair: yields (namespace, the host end's address)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        missing("root and iproute2's `ip` (for a network namespace)")
    tag = f"{os.getpid() % 10000}{random.randint(0, 999)}"
    namespace, host_end, far_end = f"sb-test-{tag}", f"sbh{tag}", f"sbn{tag}"
    net = _free_subnet()
    host_address, far_address = (str(a) for a in list(net.hosts())[:2])
    _ip("netns", "add", namespace)
    try:
        _ip("link", "add", host_end, "type", "veth", "peer", "name", far_end)
        _ip("link", "set", far_end, "netns", namespace)
        _ip("addr", "add", f"{host_address}/30", "dev", host_end)
        _ip("link", "set", host_end, "up")
        _ip("-n", namespace, "addr", "add", f"{far_address}/30", "dev", far_end)
        _ip("-n", namespace, "link", "set", far_end, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        yield namespace, host_address
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=20)


async def ask_from(namespace: str, base: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", namespace, sys.executable, "-c", ASK_FROM_OUTSIDE, base, TOKEN,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return json.loads(out)


@pytest.fixture
def unready(make_settings: Any, refused: str) -> Any:
    """A server that is not ready because its Redis is not there: its reason names a host and port."""
    return make_settings(redis_url=f"redis://{refused}/0", metrics_token=TOKEN)


async def not_ready(server: LiveServer, url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(trust_env=False) as http, asyncio.timeout(30):
        while (answer := await http.get(url)).status_code != 503 or "reason" not in answer.json():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return answer.json()


async def test_outside_readyz_says_only_ready_and_metrics_need_the_token(unready: Any) -> None:
    with outside() as (namespace, host_address):
        sock = socket.socket()
        sock.bind((host_address, 0))
        async with LiveServer(create_app(unready), sock) as server:
            seen = await ask_from(namespace, server.http_url)
    status, body = seen["readyz"]
    assert status == 503 and json.loads(body) == {"ready": False}
    assert seen["metrics"][0] in (401, 403) and "switchboard_" not in seen["metrics"][1]
    assert seen["metrics_wrong_token"][0] == 401
    assert seen["metrics_token"][0] == 200 and "switchboard_turns_total" in seen["metrics_token"][1]


async def test_this_machine_sees_why_and_a_proxied_request_does_not(unready: Any) -> None:
    async with LiveServer(create_app(unready)) as server:
        detail = await not_ready(server, f"{server.http_url}/readyz")
        async with httpx.AsyncClient(base_url=server.http_url, trust_env=False) as http:
            metrics = await http.get("/metrics")
            proxied = [
                await http.get(path, headers={header: "203.0.113.7"})
                for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded")
                for path in ("/readyz", "/metrics")
            ]
    port = unready.redis_url.get_secret_value().rsplit(":", 1)[1].split("/")[0]
    assert detail["ready"] is False and port in detail["reason"]  # this machine is told which Redis
    assert metrics.status_code == 200 and "switchboard_turns_total" in metrics.text
    for readyz, metrics_answer in zip(proxied[::2], proxied[1::2], strict=True):
        assert readyz.json() == {"ready": False}
        assert metrics_answer.status_code == 401


async def test_behind_the_readmes_nginx_every_request_is_from_outside(unready: Any) -> None:
    async with LiveServer(create_app(unready)) as server:
        await not_ready(server, f"{server.http_url}/readyz")
        with nginx_in_front([server.port]) as front:
            async with httpx.AsyncClient(base_url=front, trust_env=False) as http:
                readyz, metrics = await http.get("/readyz"), await http.get("/metrics")
                with_token = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert readyz.status_code == 503 and readyz.json() == {"ready": False}
    assert metrics.status_code == 401 and with_token.status_code == 200


# --- request bodies -------------------------------------------------------------------------------


async def trickle(
    server: LiveServer, path: str, length: int, seconds_per_byte: float, headers: str = ""
) -> tuple[bytes, int]:
    """POST a form a byte at a time; returns the server's answer and how many body bytes had been sent."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: switchboard.example\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"{headers}Content-Length: {length}\r\n\r\n"
    )
    writer.write(head.encode())
    sent = 0

    async def drip() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):
            while sent < length:
                writer.write(b"a")
                await writer.drain()
                sent += 1
                await asyncio.sleep(seconds_per_byte)

    dripping = asyncio.create_task(drip(), name="trickle")
    try:
        async with asyncio.timeout(length * seconds_per_byte):
            answer = await reader.read(1024)
            cut_at = sent
    finally:
        dripping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dripping
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return answer, cut_at


def test_a_request_body_has_ten_seconds_to_arrive() -> None:
    from app import BODY_TIMEOUT_S

    assert BODY_TIMEOUT_S == 10


@pytest.mark.parametrize(
    ("path", "headers"),
    [("/incoming-call", ""), ("/admin/gaps/1/handled", "Authorization: Basic YWRtaW46cHc=\r\n")],  # admin:pw
)
async def test_a_trickled_body_is_cut_before_any_work(make_settings: Any, path: str, headers: str) -> None:
    app = create_app(make_settings(admin_password="pw", twilio_auth_token="t", public_url="https://x.example"))
    app.config["BODY_TIMEOUT"] = 1  # the same bound, shorter, so the test need not wait 10 s
    async with LiveServer(app) as server:
        answer, cut_at = await trickle(server, path, length=600, seconds_per_byte=0.05, headers=headers)
        rejected = server.app.extensions["switchboard"].metrics.registry.get_sample_value(
            "switchboard_twilio_rejected_total", {"reason": "signature"}
        )
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert cut_at < 600  # cut while the body was still coming
    assert not rejected  # the signature was never even checked


# --- the review page: parameters, passwords, redirects ----------------------------------------------

PASSWORD = "the-right-password"


@pytest.fixture
def admin_settings(tmp_path: Any) -> dict[str, Any]:
    return {"admin_password": PASSWORD, "database_url": f"sqlite:///{tmp_path / 'records.sqlite3'}"}


async def records_ready(server: LiveServer) -> None:
    async with asyncio.timeout(30):
        await server.app.extensions["switchboard"].records.ready.wait()


async def test_overflowing_admin_parameters_are_refused_and_nothing_is_logged_as_an_error(
    serve: Any, admin_settings: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    from app.admin.guard import csrf_token

    huge = "9" * 20
    async with serve(**admin_settings) as server:
        await records_ready(server)
        token = csrf_token(server.app.extensions["switchboard"].settings)
        async with httpx.AsyncClient(base_url=server.http_url, auth=("admin", PASSWORD), trust_env=False) as http:
            answers = {
                path: (await http.get(path)).status_code
                for path in (
                    "/admin/calls?to=9999-12-31",
                    f"/admin/calls?after=2026-01-01T00:00:00_{huge}",
                    "/admin/gaps?offset=1e20",
                    f"/admin/gaps?offset={huge}",
                    f"/admin/messages?before={huge}",
                    f"/admin/deliveries?before={huge}",
                )
            }
            for path in (f"/admin/gaps/{huge}/handled", f"/admin/messages/{huge}/handled",
                         f"/admin/deliveries/{huge}/send-again"):  # fmt: skip
                answers[path] = (await http.post(path, data={"csrf_token": token})).status_code
            still = (
                (await http.get("/admin/calls?to=2026-12-31")).status_code,
                (await http.get("/admin/gaps")).status_code,
            )
    assert all(400 <= status < 500 for status in answers.values()), answers
    assert still == (200, 200)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_password_guessing_slows_down_one_client_and_never_the_right_password(
    serve: Any, admin_settings: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    from app.admin.guard import Logins

    waits: list[float] = []
    hold, held, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def sleep(seconds: float) -> None:  # the guard's wait, seen and (when told) held
        waits.append(seconds)
        if hold.is_set():
            held.set()
            await release.wait()

    caplog.set_level(logging.INFO, "switchboard.admin")
    async with serve(**admin_settings) as server:
        await records_ready(server)
        svc = server.app.extensions["switchboard"]
        svc.logins.sleep = sleep
        other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with (
            httpx.AsyncClient(base_url=server.http_url, trust_env=False) as guesser,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", transport=other, trust_env=False) as team,
        ):
            statuses = [(await guesser.get("/admin", auth=("admin", f"guess-{n}"))).status_code for n in range(10)]
            assert waits == [Logins.wait_after(n) for n in range(4, 11)] and waits[-1] > 0  # the 10th waited
            hold.set()
            eleventh = asyncio.create_task(guesser.get("/admin", auth=("admin", "guess-10")))
            async with asyncio.timeout(10):
                await held.wait()  # the 11th is now waiting in the guard
            right_elsewhere = await team.get("/admin", auth=("admin", PASSWORD))
            right_here = await guesser.get("/admin", auth=("admin", PASSWORD))
            assert not eleventh.done()  # both went through while the guess was still held
            release.set()
            held = await eleventh
        counted = {
            outcome: svc.metrics.registry.get_sample_value("switchboard_admin_logins_total", {"outcome": outcome})
            for outcome in ("success", "failure")
        }
    assert statuses == [401] * 10 and held.status_code == 401
    assert right_elsewhere.status_code == right_here.status_code == 200
    assert counted == {"success": 2.0, "failure": 11.0}
    logged = [r.getMessage() for r in caplog.records if r.name == "switchboard.admin"]
    assert sum("wrong password from 127.0.0.1" in line for line in logged) == 11
    assert any("logged in from 127.0.0.2" in line for line in logged)
    assert any("logged in from 127.0.0.1 after 11 wrong password(s)" in line for line in logged)
    assert not [line for line in caplog.text.splitlines() if "guess-" in line or PASSWORD in line]


async def test_no_redirect_is_built_from_the_host_header(serve: Any, admin_settings: dict[str, Any]) -> None:
    async with serve(**admin_settings, public_url="https://switchboard.example") as server:
        await records_ready(server)
        async with httpx.AsyncClient(base_url=server.http_url, trust_env=False) as http:
            unauthenticated = [
                await http.get(path, headers={"Host": "evil.example"})
                for path in ("/admin//calls", "/admin//", "//admin", "/admin/calls/", "/admin")
            ]
            from app.admin.guard import csrf_token

            token = csrf_token(server.app.extensions["switchboard"].settings)
            handled = await http.post(
                "/admin/gaps/1/handled", data={"csrf_token": token}, auth=("admin", PASSWORD),
                headers={"Host": "evil.example"},
            )  # fmt: skip
    for answer in unauthenticated:
        assert not answer.is_redirect and "evil.example" not in answer.headers.get("Location", "")
    assert handled.status_code == 303 and handled.headers["Location"] == "/admin/gaps"


# --- logs and files -------------------------------------------------------------------------------


def test_a_value_with_a_newline_stays_on_its_log_line() -> None:
    import io

    from app.observability import TRACE_INDENT, log_handler

    out = io.StringIO()
    logger = logging.getLogger("switchboard.test-forging")
    logger.addHandler(log_handler("text", out))
    logger.propagate = False
    forged = "end_call\n12:00:00 INFO    switchboard.admin: review page: logged in from 10.0.0.1\r\x1b[2K"
    try:
        logger.warning("tool call %s rejected", forged, extra={"conversation_id": "conv\n12:00:01 ERROR x"})
        try:
            raise ValueError(forged)
        except ValueError:
            logger.exception("brain error: %s", forged)
    finally:
        logger.handlers.clear()
        logger.propagate = True
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(tuple("0123456789")) and "\\n12:00:00 INFO" in lines[0] and "\\x1b" in lines[0]
    assert "\\n12:00:01 ERROR" in lines[0]
    assert lines[1].count("ERROR") == 1 and "\\n12:00:00" in lines[1]
    assert all(line.startswith(TRACE_INDENT) for line in lines[2:])  # the traceback, never a record of its own
    assert len([line for line in lines if not line.startswith(TRACE_INDENT)]) == 2


async def test_a_new_data_dirs_files_are_the_owners_alone(tmp_path: Any, kb_index: Any) -> None:
    """`make call` in a fresh checkout: everything it writes under a DATA_DIR it creates (the records
    file, its WAL, call.log, the exported model) is 0600, every directory 0700."""
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copy(ENV_EXAMPLE, root / ".env.example")
    (root / "knowledge").symlink_to(KNOWLEDGE)
    shutil.copytree(kb_index, root / "index")
    (root / ".env").write_text("DATA_DIR=state\nINDEX_DIR=index\nSHARED_SECRET=s3cret\n")
    code, _, err = await run(root, *COMMAND, "--say", "hello", "--say", "my card starts 4012 8888", timeout=600)
    assert code == 0, err
    data_dir = root / "state"
    made = [data_dir, *data_dir.rglob("*")]
    modes = {str(path.relative_to(root)): oct(path.stat().st_mode & 0o777) for path in made}
    assert {"state/records.sqlite3", "state/call.log"} <= set(modes)
    assert any(name.startswith("state/models/") for name in modes)
    wrong = {name: mode for name, mode in modes.items() if mode != ("0o700" if (root / name).is_dir() else "0o600")}
    assert not wrong
