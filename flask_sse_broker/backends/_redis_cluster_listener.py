"""The listener threads of the Redis Cluster backend (``_redis_cluster.py``).

One :class:`Reader` per primary: one sharded pub/sub connection to it, a
:class:`~._redis_channels.Channels` of the single-Redis backend
(``SSUBSCRIBE``), holding the channels of its partitions that the process
has local recipients for (``_redis_cluster_routes.py``), read by one thread
(a greenlet under gevent).

A partition's position (the last event of it up to which this process has
everything it needs) advances on the events this process receives, and
each ``advance_interval`` to the partition's head once a ``PING`` proved
every event up to it delivered (:meth:`Reader.advance`), so a quiet
topic's position keeps up with its busy neighbours'. When a channel goes
live, the reader delivers from the partition's stream everything after that
position before the streams waiting for the channel may read where they
start (as the single-Redis listener's ``sync``): the events published
before Redis ran the ``SSUBSCRIBE`` never arrive as messages, and those on
channels held already that are still on their way arrive later as
duplicates (dropped). So the position then covers every event of the
partition the process needs, the new channel's included. On every
(re)connection it first delivers from each partition's stream what came
after its position, so a blip loses nothing Redis kept; if what it never
delivered was trimmed, the backend ends the local streams (their clients
resume and are reset). A primary that restarted without its data starts new streams: the
reader follows them. Events go to :meth:`RedisClusterBackend.deliver
<._redis_cluster.RedisClusterBackend.deliver>`, control messages from other
processes to the hub (:func:`apply_control`).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import typing as t

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from .._backoff import EqualJitterBackoff
from .._wire import Audience, Seq, format_event_id, parse_event_id
from ..exceptions import BackendError, ClientNotFound, TooManyTopics
from ._cluster_cursor import ORIGIN
from ._redis_channels import Channels
from ._redis_cluster_keys import partition_of, tag_of
from ._redis_keys import parse_event_message, text
from .base import logger

if t.TYPE_CHECKING:
    from ._redis_cluster import RedisClusterBackend
    from ._redis_cluster_keys import Partition

#: What a Redis Cluster operation may raise when a node is unreachable or refuses.
ERRORS = (redis.RedisError, RedisClusterException, OSError)


def never_trimmed(info: dict[t.Any, t.Any]) -> bool:
    """Whether a stream (its ``XINFO STREAM``) still holds every entry ever
    added. Trimming leaves ``max-deleted-entry-id`` alone: count instead."""
    return bool(info.get("entries-added") == info.get("length"))


def apply_control(backend: RedisClusterBackend, message: dict[str, t.Any]) -> None:
    """A subscribe, unsubscribe, disconnect or revoke from another process;
    the channels then follow the hub (a new topic's events reach the client
    from when its channel is live here)."""
    client_id, op = message["client"], message["op"]
    hub = backend.hub
    try:
        if op == "revoke":
            for topic in message["topics"]:
                hub.revoke(topic, client_id)
        elif op == "subscribe":
            backend.hold_from(message["topics"], message.get("heads") or {})
            hub.subscribe(client_id, message["topics"])
        elif op == "unsubscribe":
            hub.unsubscribe(client_id, message["topics"])
        elif op == "disconnect":
            hub.disconnect(client_id)
    except ClientNotFound:
        pass  # the client lives elsewhere
    except TooManyTopics as e:
        logger.warning("subscribe of client %r refused here: %s", client_id, e)
    backend.reroute(client_id, message["topics"], wait=False)
    if op in ("subscribe", "unsubscribe") and hub.is_connected(client_id):
        with contextlib.suppress(BackendError):  # the next refresh writes it
            backend.presence().changed(client_id)


def deliver_entry(
    backend: RedisClusterBackend, index: int, entry_id: bytes, fields: dict[bytes, bytes]
) -> None:
    """Deliver one stream entry of partition ``index`` (a duplicate is dropped)."""
    seq = parse_event_id(text(entry_id))
    if seq is not None:
        kind = Audience(fields[b"k"].decode())
        target = fields[b"t"].decode() if kind is not Audience.ALL else None
        backend.deliver(index, seq, kind, target, fields[b"b"])


class _ReaderChannels(Channels):
    """A reader's channels: one that goes live is caught up from its
    partition's stream at once, before the next message is handled (so the
    position is still that of the events received before the ``SSUBSCRIBE``
    ran), and before its waiters are released."""

    def __init__(self, reader: Reader, pool: redis.ConnectionPool) -> None:
        super().__init__(pool, reader.handle, lambda: None, sharded=True)
        self._owner = reader
        self._synced: set[bytes] = set()

    def _handle(self, reply: t.Any) -> None:
        # Subscribed, a PING is answered [pong, argument]; else the argument.
        if isinstance(reply, bytes) or (isinstance(reply, list) and len(reply) == 2 and reply[0] == b"pong"):
            self._owner.advance(reply if isinstance(reply, bytes) else reply[1])
            return
        super()._handle(reply)
        fresh = [c for c in self._settling if c not in self._synced]
        if fresh:
            self._synced.update(fresh)
            self._owner.sync(fresh)

    def _settle_live(self) -> None:
        self._synced.clear()
        super()._settle_live()

    def unsettled(self) -> set[bytes]:
        """The hash tags of the wanted channels that are not live and caught
        up yet (their ``SSUBSCRIBE`` queued, or sent and not answered)."""
        with self._lock:
            return {tag_of(c) for c in self._wanted if c not in self._live or self._unanswered.get(c)}


class Reader:
    """One listener thread: the channels one primary holds for this process,
    over one sharded pub/sub connection; catches up from the streams on every
    (re)subscribe and when a channel goes live, reconnects with backoff."""

    def __init__(self, backend: RedisClusterBackend, partitions: list[Partition]) -> None:
        self.backend = backend
        self.partitions = partitions
        self.ready = threading.Event()
        self.connected = False
        #: The last attempt to reach the primary failed (until one succeeds).
        self.failing = False
        self._by_tag = {p.tag.encode(): p for p in partitions}
        self._pool = redis.ConnectionPool(
            socket_timeout=backend.socket_timeout + backend.connect_timeout,
            socket_connect_timeout=backend.connect_timeout,
            retry=Retry(NoBackoff(), 0),
            protocol=2,
        )
        self._client: redis.Redis[bytes] | None = None
        self.channels = _ReaderChannels(self, self._pool)
        #: The advance under way: its ``PING`` argument and the heads read
        #: before it was sent (see :meth:`advance`); reset on reconnection.
        self._advancing: tuple[bytes, dict[int, Seq]] | None = None
        self._pings = 0
        #: The reader of partition 0 holds the broadcast and control channel
        #: and refreshes the process's presence.
        self._refreshes = any(p.index == 0 for p in partitions)
        if self._refreshes:
            self.channels.want([backend.partitions[0].keys.all.encode()])
        self.thread = threading.Thread(target=self._run, name="sse-redis-cluster-listener", daemon=True)

    def close(self) -> None:
        self.channels.close()
        self._pool.disconnect()

    def _run(self) -> None:
        backend = self.backend
        backoff = EqualJitterBackoff(backend.min_backoff, backend.max_backoff)
        failures = 0
        while not backend._stop.is_set():
            try:
                host, port = backend.owner(self.partitions[0].channel)
                if (host, port) != (
                    self._pool.connection_kwargs.get("host"),
                    self._pool.connection_kwargs.get("port"),
                ):
                    self._pool.disconnect()
                    self._pool.connection_kwargs.update(host=host, port=port)
                    self._client = redis.Redis(
                        host=host,
                        port=port,
                        socket_timeout=backend.socket_timeout,
                        socket_connect_timeout=backend.connect_timeout,
                        retry=Retry(NoBackoff(), 0),
                    )
                self._subscribe()
                if failures:
                    logger.warning("Redis Cluster listener reconnected to %s:%d", host, port)
                failures = 0
                self._listen()
            except (*ERRORS, BackendError) as e:
                self.connected = False
                self.failing = True
                failures += 1
                if backend._stop.is_set():
                    break
                delay = backoff.compute(failures)
                if failures == 1:
                    logger.error("Redis Cluster listener lost its connection (%s); reconnecting", e)
                elif failures % 5 == 0:
                    self._refresh_slots()  # a failover may have moved the slots
                backend._stop.wait(delay)
            except Exception:  # pragma: no cover - a bug must not end delivery
                logger.exception("Redis Cluster listener failed; restarting it")
                backend._stop.wait(backend.max_backoff)
            finally:
                self.connected = False
                with contextlib.suppress(Exception):  # closing a broken socket
                    self.channels.disconnect()

    def _refresh_slots(self) -> None:
        with contextlib.suppress(Exception):  # the next attempt tells
            self.backend.cluster().nodes_manager.initialize()

    def _subscribe(self) -> None:
        backend = self.backend
        self._advancing = None
        self.channels.connect()
        deadline = time.monotonic() + backend.socket_timeout + backend.connect_timeout
        while self.channels.pending():
            left = deadline - time.monotonic()
            if left <= 0:
                raise redis.TimeoutError("no subscription confirmation from Redis")
            self.channels.read(left)
        self._catch_up()
        self.connected = True
        self.failing = False
        self.ready.set()

    def _held_tags(self) -> set[bytes]:
        return {tag_of(c) for c in self.channels.wanted()}

    def _catch_up(self) -> None:
        backend = self.backend
        assert self._client is not None
        pipe = self._client.pipeline(transaction=False)
        for p in self.partitions:
            pipe.get(p.last)
            start = backend.position(p.index)
            pipe.xrange(p.stream, min=format_event_id(start) if start else "+", max="+")
            pipe.xinfo_stream(p.stream)
        results = pipe.execute(raise_on_error=False)
        held = self._held_tags()
        for i, p in enumerate(self.partitions):
            raw_head, entries, info = results[3 * i : 3 * i + 3]
            for result in (raw_head, entries):
                if isinstance(result, Exception):
                    raise result
            head = parse_event_id(text(raw_head)) if raw_head is not None else None
            position = backend.position(p.index)
            if position is None or (head is not None and p.tag.encode() not in held):
                # First time, or nothing of it is needed here: start at its head.
                backend.set_position(p.index, head or ORIGIN)
            elif head is not None and head > position:
                self._catch_up_partition(p, position, head, entries, info)

    def _catch_up_partition(
        self, p: Partition, position: Seq, head: Seq, entries: list[t.Any], info: t.Any
    ) -> None:
        """Deliver the entries after ``position``; unless they were trimmed."""
        backend = self.backend
        # The position's own entry must still be there (the stream keeps
        # one more than history_size for that): else events after it
        # were trimmed before this process delivered them.
        untrimmed = not isinstance(info, Exception) and never_trimmed(info)
        if entries and text(entries[0][0]) == format_event_id(position):
            entries, lost = entries[1:], False
        elif untrimmed and position != ORIGIN:
            # A new stream (a primary restarted without its data): what
            # it lost is lost for everyone; follow the new one.
            logger.warning("partition %d restarted without its history; following it", p.index)
            lost = False
        else:
            lost = not untrimmed
        if lost:
            backend.set_position(p.index, head)
            backend.on_gap(p.index)
            return
        for entry_id, fields in entries:
            self._deliver_entry(p.index, entry_id, fields)

    def sync(self, channels: list[bytes]) -> None:
        """Deliver what the partitions of channels that just went live hold
        after their positions (see the module). While (re)connecting the
        catch-up that follows does it.

        A topic subscribed from another process is read from the partition's
        position when its control message arrived (:meth:`hold_from
        <._redis_cluster.RedisClusterBackend.hold_from>`): its events since
        then that are older than the position now are delivered ``late``."""
        backend = self.backend
        floors = backend.floors(channels)
        partitions = {tag_of(c) for c in channels} & self._by_tag.keys()
        if not self.connected or not partitions or self._client is None:
            return
        pipe = self._client.pipeline(transaction=False)
        reads = []
        for p in (self._by_tag[tag] for tag in partitions):
            position = backend.position(p.index) or ORIGIN
            late = {target: seq for (index, target), seq in floors.items() if index == p.index}
            start = min([position, *late.values()])
            pipe.xrange(p.stream, min="(" + format_event_id(start), max="+")
            reads.append((p.index, position, late))
        for (index, position, late), entries in zip(reads, pipe.execute(), strict=True):
            for entry_id, fields in entries:
                self._deliver_entry(index, entry_id, fields, position, late)

    def _deliver_entry(
        self,
        index: int,
        entry_id: bytes,
        fields: dict[bytes, bytes],
        position: Seq = ORIGIN,
        late: dict[str, Seq] | None = None,
    ) -> None:
        seq = parse_event_id(text(entry_id))
        if seq is None:
            return
        kind = Audience(fields[b"k"].decode())
        target = fields[b"t"].decode() if kind is not Audience.ALL else None
        if seq > position:
            self.backend.deliver(index, seq, kind, target, fields[b"b"])
        elif late and kind is Audience.TOPIC and target in late and seq > late[target]:
            self.backend.deliver(index, seq, kind, target, fields[b"b"], late=True)

    def _listen(self) -> None:
        backend = self.backend
        last_seen = next_ping = next_advance = time.monotonic()
        while not backend._stop.is_set():
            got = self.channels.read(backend.poll_interval)
            now = time.monotonic()
            if got:
                last_seen = now
            if now >= next_advance and self._advancing is None:
                self._read_heads()
                next_advance = now + backend.advance_interval
            if now >= next_ping:
                if now - last_seen > backend.refresh_interval * 2 + backend.socket_timeout:
                    raise redis.ConnectionError("Redis stopped answering the listener's pings")
                self.channels.ping()
                if self._refreshes:
                    backend.refresh_presence()
                next_ping = now + backend.refresh_interval

    def _read_heads(self) -> None:
        """Read the partitions' heads, then ``PING`` on the pub/sub
        connection: its answer completes the advance (:meth:`advance`)."""
        assert self._client is not None
        pipe = self._client.pipeline(transaction=False)
        for p in self.partitions:
            pipe.get(p.last)
        try:
            found = pipe.execute()
        except ERRORS as e:  # a moved slot, a primary going down: the next tick
            logger.debug("reading the partitions' heads failed: %s", e)
            return
        heads = {}
        for p, raw in zip(self.partitions, found, strict=True):
            head = parse_event_id(text(raw)) if raw is not None else None
            if head is not None:
                heads[p.index] = head
        self._pings += 1
        self._advancing = (b"advance:%d" % self._pings, heads)
        self.channels.ping(self._advancing[0])

    def advance(self, token: bytes) -> None:
        """The answer to a ``PING`` (the listener thread): when it is the
        advance's, move each partition's position up to the head read
        before it was sent.

        Sound because Redis answers a ``PING`` on a subscribed connection
        after every message it pushed there before, and an event's id is in
        its partition's ``last`` key only once it was published (one
        script): every event up to the head on a live channel has been
        delivered by now. A partition with a channel not live and caught up
        yet keeps its position (its catch-up starts there); the others then
        hold everything up to their heads that this process needs, so a
        quiet partition's position no longer falls behind its busy
        neighbours (a cursor written now is current, and the catch-up after
        a reconnection does not take it for trimmed history)."""
        advancing = self._advancing
        if advancing is None or token != advancing[0]:
            return  # the keep-alive's
        self._advancing = None
        unsettled = self.channels.unsettled()
        by_index = {p.index: p.tag.encode() for p in self.partitions}
        heads = {i: head for i, head in advancing[1].items() if by_index[i] not in unsettled}
        self.backend.advance(heads)

    def handle(self, data: bytes) -> None:
        """One message (from any of the reader's channels)."""
        try:
            if data[:2] == b"E ":
                seq, kind, target, body = parse_event_message(data)
                self.backend.deliver(partition_of(kind, target), seq, kind, target, body)
            elif data[:2] == b"C ":
                control = json.loads(data[2:])
                if not isinstance(control, dict):
                    raise TypeError("a control message must be a JSON object")
                if control.get("node") != self.backend.node:  # applied where it was sent
                    apply_control(self.backend, control)
        except (ValueError, KeyError, TypeError) as e:
            logger.warning("ignored a malformed message from Redis: %r (%s)", data[:200], e)
