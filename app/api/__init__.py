"""HTTP endpoints, one blueprint per feature."""

from __future__ import annotations

from flask import Flask

from . import admin, analytics, dashboard, health, openapi, provider_status, sessions, userscript, v1


def register_blueprints(app: Flask) -> None:
    """Attach every feature's blueprint."""
    app.register_blueprint(v1.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(sessions.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(provider_status.bp)
    app.register_blueprint(userscript.bp)
    app.register_blueprint(analytics.bp)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(openapi.bp)
