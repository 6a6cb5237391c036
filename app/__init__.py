"""Switchboard: an AI phone agent on a company's own number, with the company's own brain."""

from __future__ import annotations

from quart import Quart

from .settings import Settings


def create_app(settings: Settings) -> Quart:
    from .brain import brain
    from .health import health
    from .services import Services

    app = Quart(__name__)
    # Twilio webhooks are small forms; anything bigger is refused before it is read.
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    services = Services(settings)
    app.extensions["switchboard"] = services
    app.register_blueprint(health)
    app.register_blueprint(brain)

    @app.before_serving
    async def _open() -> None:
        await services.start()

    @app.after_serving
    async def _close() -> None:
        await services.stop()

    return app
