"""Publishing on a Redis Cluster: the publish script's call for one event,
and a batch pipelined per primary.

**A batch** is grouped by the primary holding each item's partition (as the
backend last saw the slots). Each primary's share is written on one of its
pooled connections as one non-transactional pipeline: a ``SCRIPT LOAD`` (a
hash lookup when the script is known: no ``NOSCRIPT`` can split a pipeline)
and the publish script once per item. Every primary's pipeline is written
before any reply is read, so the round trips overlap. A script is atomic, and
one connection's commands run in order, so each partition's items are
appended in the batch's order.

**Failures.** Every item carries an idempotency key of its own, so sending it
again returns the id it was stored under instead of appending it twice. The
items of a pipeline whose connection broke (a primary restarted since the
last publish), or answered ``MOVED`` (their slot moved), are sent once more
on fresh routes, after every reply of the batch was read. A second failure,
a timeout or any other error reply raises
:exc:`~flask_sse_broker.BackendError`; by then every other primary has
published all its items of the batch, and the failing one any of its items
(each once or not at all; after a timeout it cannot tell which).
"""

from __future__ import annotations

import typing as t

import redis
from redis.exceptions import MovedError

from .._wire import Audience
from ..exceptions import BackendError
from ._redis_cluster_keys import Partition, channel_of, partition_of
from ._redis_keys import text
from ._redis_publish import _bytes, _pack

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
    pipes: dict[int, _Pipe] = {}
    for i in indices:
        script = backend.route(calls[i][0])
        pipe = pipes.get(id(script.registered_client))
        if pipe is None:
            pipe = pipes[id(script.registered_client)] = _Pipe(script)
        pipe.group.append(i)
    # Connections taken in one order by every caller: no two batches each
    # hold one primary's last connection waiting for the other's.
    ordered = sorted(pipes.values(), key=lambda pipe: pipe.address)
    try:
        for pipe in ordered:
            pipe.send(calls)
        for pipe in ordered:
            pipe.read(calls, ids)
    finally:
        for pipe in ordered:
            pipe.release()
    failed = [pipe for pipe in ordered if pipe.error is not None]
    if not failed:
        return
    fatal = [pipe for pipe in failed if not _transient(pipe.error)]
    if fatal or not again:
        first = (fatal or failed)[0]
        raise _failed(calls, first.group, t.cast(BaseException, first.error))
    backend._forget_routes(refresh=any(isinstance(pipe.error, MovedError) for pipe in failed))
    _publish(backend, calls, [i for pipe in failed for i in pipe.group if ids[i] is None], ids, again=False)


class _Pipe:
    """One primary's share of a batch, on one connection of its pool."""

    def __init__(self, script: t.Any) -> None:
        self.script = script
        self.pool: redis.ConnectionPool = script.registered_client.connection_pool
        kwargs = self.pool.connection_kwargs
        self.address = (str(kwargs.get("host")), int(kwargs.get("port", 0)))
        self.group: list[int] = []
        self.conn: t.Any = None
        #: Replies still on the connection: it must not go back to the pool.
        self.unread = False
        self.error: BaseException | None = None

    def send(self, calls: t.Sequence[Call]) -> None:
        # Packed here (``_redis_publish._pack``): redis-py's packer cost more
        # CPU than everything else a batched publish does.
        script = self.script
        sha = script.sha.encode()
        packed = [_pack(b"SCRIPT", b"LOAD", _bytes(script.script))]
        for i in self.group:
            _, keys, args = calls[i]
            packed.append(_pack(b"EVALSHA", sha, b"%d" % len(keys), *map(_bytes, keys), *map(_bytes, args)))
        try:
            self.conn = t.cast(t.Any, self.pool).get_connection()  # the stubs still want a name
            self.unread = True
            self.conn.send_packed_command([b"".join(packed)], check_health=False)
        except (redis.RedisError, OSError) as e:
            self.error = e

    def read(self, calls: t.Sequence[Call], ids: list[str | None]) -> None:
        if self.error is not None:
            return
        conn = self.conn
        try:
            conn.read_response()  # SCRIPT LOAD: an error shows in the replies below
            for i in self.group:
                try:
                    reply = conn.read_response()
                except redis.ResponseError as e:  # one reply: the connection is in step
                    self.error = self.error or e
                    continue
                ids[i] = f"{calls[i][0].index}:{text(reply)}"
        except (redis.RedisError, OSError) as e:
            self.error = e
            return
        self.unread = False

    def release(self) -> None:
        if self.conn is None:
            return
        if self.unread:
            # A timeout or a broken socket: a late reply must never be read
            # as the next command's.
            self.conn.disconnect()
        self.pool.release(self.conn)
        self.conn = None


def _transient(error: BaseException | None) -> bool:
    """A broken connection or a moved slot: worth one more try elsewhere."""
    return isinstance(error, MovedError) or (
        isinstance(error, redis.ConnectionError) and not isinstance(error, redis.TimeoutError)
    )


def _failed(calls: t.Sequence[Call], group: list[int], error: BaseException) -> BackendError:
    partitions = sorted({calls[i][0].index for i in group})
    return BackendError(
        f"Redis Cluster backend: publishing a batch to partitions {partitions} failed: {error}"
    )
