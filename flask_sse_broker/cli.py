"""``flask sse publish`` and ``flask sse stats``."""

from __future__ import annotations

import json
import typing as t

import click
from flask import Blueprint

if t.TYPE_CHECKING:
    from ._broker import SSEBroker


def register(bp: Blueprint, broker: SSEBroker) -> None:
    """Add the commands to the blueprint's ``sse`` CLI group."""

    @bp.cli.command("publish")
    @click.argument("topic")
    @click.argument("data")
    @click.option("--event", "event_name", default=None, help="Event name (default: message).")
    def publish(topic: str, data: str, event_name: str | None) -> None:
        """Publish DATA (JSON, or else a string) to TOPIC.

        This command runs in its own process, so it reaches browsers only
        through a shared backend: it needs SSE_REDIS_URL.
        """
        if not broker.config.redis_url:
            raise click.ClickException(
                "set SSE_REDIS_URL: with the in-process backend this command's own "
                "broker has no subscribers, so nothing would be delivered"
            )
        try:
            payload = json.loads(data)
        except ValueError:
            payload = data
        try:
            broker.broadcast_to_topic(topic, payload, event=event_name)
        except (ValueError, TypeError) as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"published to {topic!r}; last event id {broker.last_event_id()}")

    @bp.cli.command("stats")
    def stats() -> None:
        """Print the broker's counters as JSON (cluster-wide presence with Redis)."""
        result = broker.stats()
        result["cluster_clients"] = broker.client_count(cluster=True)
        click.echo(json.dumps(result, indent=2, sort_keys=True))
