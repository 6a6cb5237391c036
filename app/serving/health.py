"""Liveness, readiness and metrics for the load balancer and Prometheus.

Only this machine sees the details: `/readyz` says why a replica is not ready (which names internal
hosts) only to a client on loopback, and `/metrics` is served to loopback or to a request bearing
METRICS_TOKEN. A request a proxy passed on comes from loopback too, but carries the proxy's headers
(`Forwarded`, `X-Forwarded-For`, `X-Real-IP`): it counts as from outside.
"""

from __future__ import annotations

import hmac
import ipaddress

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response, request

from app.services import services

health = Blueprint("health", __name__)

PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


def from_this_machine() -> bool:
    """The request came straight from loopback, not through a proxy."""
    if any(name in request.headers for name in PROXY_HEADERS):
        return False
    try:
        return ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        return False


def _bearer_ok(token: str | None) -> bool:
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if not token or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


@health.get("/healthz")
async def healthz() -> tuple[dict[str, str], int]:
    return {"status": "ok"}, 200


@health.get("/readyz")
async def readyz() -> tuple[dict[str, object], int]:
    svc = services()
    reason = svc.unready_because
    status = 200 if reason is None else 503
    if not from_this_machine():
        return {"ready": reason is None}, status
    retriever = svc.retriever
    body: dict[str, object] = {
        "ready": reason is None,
        "index_build": retriever.build.build_id if retriever is not None and retriever.build is not None else None,
        "draining": svc.drain.draining,
    }
    if svc.shared is not None:
        body["replica"] = svc.shared.replica
    if reason is not None:
        body["reason"] = reason
    return body, status


@health.get("/metrics")
async def metrics() -> Response:
    svc = services()
    token = svc.settings.secret("metrics_token")
    if not from_this_machine() and not _bearer_ok(token):
        if token is None:
            return Response("/metrics is served to this machine only: set METRICS_TOKEN.\n", 403)
        return Response("Bearer METRICS_TOKEN required.\n", 401, {"WWW-Authenticate": 'Bearer realm="metrics"'})
    return Response(generate_latest(svc.metrics.registry), 200, content_type=CONTENT_TYPE_LATEST)
