"""Flask commands: `flask --app passenger_wsgi cleanup-sessions --days N [--dry-run]` (or `--all`)."""

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
    help="Remove sessions not seen for this many days (default GATEWAY_SESSION_CLEANUP_DAYS); 0 needs --all.",
)
@click.option("--all", "everything", is_flag=True, help="Remove every session, however recently seen.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@with_appcontext
def cleanup_sessions(days: float | None, everything: bool, dry_run: bool) -> None:
    """Remove sessions not seen for a while (the same code and lock as POST /cron/cleanup)."""
    if everything and days not in (None, 0):
        raise click.UsageError("--all removes every session; leave --days out.")
    # 0 days is every session, active ones included: too much to take from a slip (other tools read 0 as "stats").
    if days == 0 and not everything and not dry_run:
        raise click.UsageError("--days 0 removes every session, active ones too: add --all to mean it.")
    click.echo(json.dumps(cleanup(0 if everything else days, dry_run), indent=2, ensure_ascii=False))


def register_commands(app: Flask) -> None:
    """Add the gateway's flask commands."""
    app.cli.add_command(cleanup_sessions)
