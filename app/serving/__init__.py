"""Serving: Hypercorn tuned for calls, health and readiness, draining on SIGTERM, and worker processes."""
