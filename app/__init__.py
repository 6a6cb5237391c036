"""Switchboard: an AI phone agent on a company's own number, with the company's own brain."""

from __future__ import annotations

from quart import Quart

from app.clock import Clock
from app.settings import Settings

# A request body must have arrived whole within this: a body trickled in a byte at a time is cut
# (408) before any work is done with it. (Hypercorn's read timeout is per read, so a trickle never
# trips it; Quart's BODY_TIMEOUT bounds the whole body, and its default is 60 s.)
BODY_TIMEOUT_S = 10


def create_app(settings: Settings, clock: Clock | None = None) -> Quart:
    """`clock`: the time opening hours are read against (default: the system's)."""
    from app.admin.routes import admin
    from app.brain.route import brain
    from app.callbacks.routes import callback_routes
    from app.services import Services
    from app.serving.health import health
    from app.telephony.bridge import MediaStreamRoute
    from app.telephony.handoff import handoff
    from app.telephony.webhook import twilio_webhook

    app = Quart(__name__)
    # Twilio webhooks are small forms; anything bigger is refused before it is read.
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT_S
    # Routing never redirects ("/admin//calls", a missing trailing slash): werkzeug would build the
    # Location from the Host header, which the client chooses. Such a path is simply not found.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    services = Services(settings, clock)
    app.extensions["switchboard"] = services
    app.register_blueprint(health)
    app.register_blueprint(brain)
    app.register_blueprint(twilio_webhook)
    app.register_blueprint(handoff)
    app.register_blueprint(callback_routes)
    app.register_blueprint(admin)
    # Served on bare ASGI in front of Quart: the one route that carries a frame every 20 ms per call.
    app.asgi_app = MediaStreamRoute(app, services.telephony)  # type: ignore[method-assign]

    @app.before_serving
    async def _open() -> None:
        await services.start()

    @app.after_serving
    async def _close() -> None:
        await services.stop()

    return app
