"""Liveness, readiness and metrics for the load balancer and Prometheus."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint

from .services import services

health = Blueprint("health", __name__)


@health.get("/healthz")
async def healthz() -> tuple[dict[str, str], int]:
    return {"status": "ok"}, 200


@health.get("/readyz")
async def readyz() -> tuple[dict[str, object], int]:
    ready = services().ready
    return {"ready": ready}, 200 if ready else 503


@health.get("/metrics")
async def metrics() -> tuple[bytes, int, dict[str, str]]:
    return generate_latest(services().metrics.registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}
