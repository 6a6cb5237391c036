"""Liveness, readiness and metrics for the load balancer and Prometheus."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint

from app.services import services

health = Blueprint("health", __name__)


@health.get("/healthz")
async def healthz() -> tuple[dict[str, str], int]:
    return {"status": "ok"}, 200


@health.get("/readyz")
async def readyz() -> tuple[dict[str, object], int]:
    svc = services()
    retriever = svc.retriever
    reason = svc.unready_because
    body: dict[str, object] = {
        "ready": reason is None,
        "index_build": retriever.build.build_id if retriever is not None and retriever.build is not None else None,
        "draining": svc.drain.draining,
    }
    if svc.shared is not None:
        body["replica"] = svc.shared.replica
    if reason is not None:
        body["reason"] = reason
    return body, 200 if reason is None else 503


@health.get("/metrics")
async def metrics() -> tuple[bytes, int, dict[str, str]]:
    return generate_latest(services().metrics.registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}
