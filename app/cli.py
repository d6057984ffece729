"""Flask commands: `flask --app passenger_wsgi cleanup-sessions --days N [--dry-run]`."""

from __future__ import annotations

import json

import click
from flask import Flask
from flask.cli import with_appcontext

from .cleanup import cleanup


@click.command("cleanup-sessions")
@click.option(
    "--days",
    type=click.FloatRange(min=0),
    default=None,
    help="Remove sessions not seen for this many days (default GATEWAY_SESSION_CLEANUP_DAYS).",
)
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@with_appcontext
def cleanup_sessions(days: float | None, dry_run: bool) -> None:
    """Remove sessions not seen for a while (the same code and lock as POST /cron/cleanup)."""
    click.echo(json.dumps(cleanup(days, dry_run), indent=2, ensure_ascii=False))


def register_commands(app: Flask) -> None:
    """Add the gateway's flask commands."""
    app.cli.add_command(cleanup_sessions)
