"""Publishing on a Redis Cluster: the publish script's call for one event,
and a batch pipelined per primary.

**A batch** is grouped by the primary holding each item's partition (as the
backend last saw the slots). Each primary's scripts go in one
non-transactional pipeline on one connection, after a ``SCRIPT LOAD`` (a
hash lookup when the script is known: no ``NOSCRIPT`` can split a
pipeline), the primaries one after another in the order they first appear in
the batch. A script is atomic, and one connection's commands run in order,
so each partition's items are appended in the batch's order.

**Failures.** Every item carries an idempotency key of its own, so sending it
again returns the id it was stored under instead of appending it twice. A
pipeline that fails on its connection (a primary restarted since the last
publish), or items answered ``MOVED`` (their slot moved), are sent once more
on fresh routes; a second failure, a timeout or any other error reply raises
:exc:`~flask_sse_broker.BackendError`. Then the primaries whose pipeline
completed before it published all their items, the primaries after it none,
and the failing one any of its items (each once or not at all; after a
timeout, published or not, it cannot tell).
"""

from __future__ import annotations

import typing as t

import redis

from .._wire import Audience
from ..exceptions import BackendError
from ._redis_cluster_keys import Partition, channel_of, partition_of
from ._redis_keys import text

if t.TYPE_CHECKING:
    from ._redis_cluster import RedisClusterBackend

#: One publish: its partition, the script's keys and arguments.
Call = tuple[Partition, list[str], list[t.Any]]


def script_call(
    backend: RedisClusterBackend, audience: Audience, target: str | None, body: bytes, key: str
) -> Call:
    """The publish script's keys and arguments for one event."""
    partitions = backend.partitions
    partition = partitions[partition_of(audience, target)]
    if backend.history_size:
        maxlen, how = backend.history_size + 1, "~"  # +1: the cursor's own entry stays
    else:
        maxlen, how = 0, "="
    keys = [
        partition.stream,
        partition.last,
        partition.published(key),
        channel_of(partitions, audience, target),
        partition.channel,
    ]
    args = [how, audience.value, target or "", body, maxlen, int(backend.idempotency_ttl * 1000)]
    return partition, keys, args


def publish_pipelined(backend: RedisClusterBackend, calls: t.Sequence[Call]) -> list[str]:
    """Every call's id (``<partition>:<stream id>``), in the calls' order.

    :raises BackendError: see the module (what was published then).
    """
    ids: list[str | None] = [None] * len(calls)
    _publish(backend, calls, list(range(len(calls))), ids, again=True)
    return [event_id for event_id in ids if event_id is not None]


def _publish(
    backend: RedisClusterBackend,
    calls: t.Sequence[Call],
    indices: list[int],
    ids: list[str | None],
    again: bool,
) -> None:
    groups: dict[int, list[int]] = {}
    for i in indices:
        groups.setdefault(id(backend.route(calls[i][0]).registered_client), []).append(i)
    for group in groups.values():
        retry = _send(backend, calls, group, ids, again)
        if retry:
            backend._forget_routes(refresh=retry == "moved")
            _publish(backend, calls, [i for i in group if ids[i] is None], ids, again=False)


def _send(
    backend: RedisClusterBackend,
    calls: t.Sequence[Call],
    group: list[int],
    ids: list[str | None],
    again: bool,
) -> str | None:
    """One primary's pipeline; ``"moved"`` or ``"broken"`` when part of it is
    to be sent again on fresh routes."""
    script = backend.route(calls[group[0]][0])
    pipe = script.registered_client.pipeline(transaction=False)
    pipe.execute_command("SCRIPT", "LOAD", script.script)
    for i in group:
        _, keys, args = calls[i]
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    try:
        replies = pipe.execute(raise_on_error=False)
    except redis.ConnectionError as e:
        if again:
            return "broken"
        raise _failed(calls, group, e) from e
    except redis.RedisError as e:
        raise _failed(calls, group, e) from e
    moved = False
    for i, reply in zip(group, replies[1:], strict=True):
        if not isinstance(reply, Exception):
            ids[i] = f"{calls[i][0].index}:{text(reply)}"
        elif again and str(reply).startswith("MOVED"):
            moved = True
        else:
            raise _failed(calls, group, reply)
    return "moved" if moved else None


def _failed(calls: t.Sequence[Call], group: list[int], error: BaseException) -> BackendError:
    partitions = sorted({calls[i][0].index for i in group})
    return BackendError(
        f"Redis Cluster backend: publishing a batch to partitions {partitions} failed: {error}"
    )
