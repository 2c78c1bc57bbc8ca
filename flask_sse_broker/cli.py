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
    @click.option(
        "--url",
        default=None,
        help="Publish through a running server's POST /_sse/publish at this URL "
        "(e.g. https://example.com/_sse/publish) instead of through Redis.",
    )
    @click.option(
        "--key",
        envvar="SSE_PUBLISH_KEY",
        default=None,
        help="Bearer key for --url (default: $SSE_PUBLISH_KEY).",
    )
    def publish(topic: str, data: str, event_name: str | None, url: str | None, key: str | None) -> None:
        """Publish DATA (JSON, or else a string) to TOPIC.

        This command runs in its own process, so it reaches browsers only
        through a shared backend (SSE_REDIS_URL) or through a running server
        (--url, with its publish key).
        """
        try:
            payload = json.loads(data)
        except ValueError:
            payload = data
        if url is not None:
            body: dict[str, t.Any] = {"topic": topic, "data": payload}
            if event_name is not None:
                body["event"] = event_name
            ids = _post(url, key, body)
            click.echo(f"published to {topic!r}; event id {ids[0]}")
            return
        if not broker.config.redis_url:
            raise click.ClickException(
                "set SSE_REDIS_URL, or use --url: with the in-process backend this "
                "command's own broker has no subscribers, so nothing would be delivered"
            )
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


def _post(url: str, key: str | None, body: dict[str, t.Any]) -> list[str]:
    """POST one event to a server's publish route; its ids, or a ClickException."""
    import urllib.error
    import urllib.request

    if not url.startswith(("http://", "https://")):
        raise click.ClickException(f"--url must be an http(s) URL: {url!r}")
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return list(json.load(response)["ids"])
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")[:500]
        raise click.ClickException(f"the server answered {e.code}: {detail}") from None
    except (OSError, ValueError, KeyError) as e:
        raise click.ClickException(f"publishing to {url} failed: {e}") from None
