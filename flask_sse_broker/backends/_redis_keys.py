"""What the Redis backend writes: key and channel names, the publish script,
and the codec of the messages on the bus. Every name is built here.

``<prefix>:stream``
    The history, a Redis Stream capped at about ``history_size`` entries. Its
    entry ids are the event ids, so every process assigns ids from one sequence.
``<prefix>:last``
    The newest event id (the stream may be trimmed to nothing).
``<prefix>:all``, ``<prefix>:t:<topic>``, ``<prefix>:c:<client id>``
    The pub/sub channels: broadcasts, one per topic, one per client id (its
    direct sends and the control messages about it: ``C {json}``: subscribe,
    unsubscribe, disconnect, revoke). A process subscribes to a topic's channel
    while a local connection holds the topic, to the channels matching a
    pattern (``PSUBSCRIBE``, see :func:`topic_glob`) while one holds the
    pattern, and to a client's while the client is connected here, so Redis
    sends it only what it has recipients for (and, for patterns, a little
    more). Control messages about a client that is not known to be live
    anywhere, and revokes of a topic from every client, go to ``<prefix>:all``.
``<prefix>:node:<node id>``
    Presence: a hash of the client ids connected to one process, each with its
    topics, expiring unless the process refreshes it. ``<prefix>:nodes`` is a
    sorted set of the processes, scored by when their presence expires.
``<prefix>:session:<client id>``
    The topics of a client id whose last connection ended, for ``session_ttl``
    seconds, so a reconnect to *any* process gets its subscriptions back.
``<prefix>:published:<idempotency key>``
    The id a publish was stored under, for ``idempotency_ttl`` seconds, so a
    publish retried after a timeout is not stored twice.
"""

from __future__ import annotations

import json
import typing as t

from .._topics import REST, SEP, STAR
from .._wire import Audience, Envelope, Seq, parse_event_id

#: The cursor before the first event, returned by ``last_event_id`` while the
#: stream is empty, so a page can connect from it and miss nothing.
ORIGIN = "0-0"

#: XADD and PUBLISH in one atomic step, so the channel carries events in id
#: order. The message is ``E <id> <audience> <target length> <target><body>``.
#: KEYS[3] is the publish's idempotency key: when it already names an id, the
#: event was stored by an earlier attempt (one whose reply timed out), and the
#: script returns that id without storing or publishing it again.
PUBLISH_SCRIPT = """
local seen = redis.call('GET', KEYS[3])
if seen then
  return seen
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[6], ARGV[2], '*',
                      'k', ARGV[3], 't', ARGV[4], 'b', ARGV[5])
redis.call('SET', KEYS[2], id)
redis.call('SET', KEYS[3], id, 'PX', ARGV[7])
redis.call('PUBLISH', ARGV[1],
           'E ' .. id .. ' ' .. ARGV[3] .. ' ' .. string.len(ARGV[4]) .. ' ' .. ARGV[4] .. ARGV[5])
return id
"""

#: Takes one topic (ARGV[1]) out of the sessions named in KEYS (JSON lists of
#: topics), keeping each one's expiry; a session left empty is deleted.
#: Returns how many held it.
REVOKE_SCRIPT = """
local changed = 0
for _, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if value then
    local kept, found = {}, false
    for _, topic in ipairs(cjson.decode(value)) do
      if topic == ARGV[1] then found = true else table.insert(kept, topic) end
    end
    if found then
      changed = changed + 1
      if #kept == 0 then redis.call('DEL', key) else redis.call('SET', key, cjson.encode(kept), 'KEEPTTL') end
    end
  end
end
return changed
"""


class RedisKeys:
    """The names under one prefix."""

    __slots__ = ("all", "last", "nodes", "prefix", "stream")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.stream = f"{prefix}:stream"
        self.last = f"{prefix}:last"
        self.all = f"{prefix}:all"
        self.nodes = f"{prefix}:nodes"

    def topic(self, topic: str) -> str:
        """The channel of one topic's events."""
        return f"{self.prefix}:t:{topic}"

    def client(self, client_id: str) -> str:
        """The channel of one client id's sends and control messages."""
        return f"{self.prefix}:c:{client_id}"

    def channel(self, audience: Audience, target: str | None) -> str:
        """The channel an event for ``audience`` / ``target`` is published on."""
        if audience is Audience.TOPIC:
            return self.topic(target or "")
        if audience is Audience.CLIENT:
            return self.client(target or "")
        return self.all

    def node(self, node_id: str) -> str:
        """The presence hash of one process."""
        return f"{self.prefix}:node:{node_id}"

    def session(self, client_id: str) -> str:
        """The remembered topics of a client id."""
        return f"{self.prefix}:session:{client_id}"

    def topic_glob(self, pattern: str) -> str:
        """The ``PSUBSCRIBE`` glob of a topic pattern's channels: the literal
        parts escaped, each ``*`` and a trailing ``**`` segment a glob ``*``.

        A glob ``*`` also matches across ``/`` (``orders/*`` gets the channel
        of ``orders/42/items`` too), so a process may receive a few events
        that no local connection wants: the hub's topic index drops them.
        """
        segments = [STAR if part in (STAR, REST) else _glob_escape(part) for part in pattern.split(SEP)]
        return f"{_glob_escape(self.prefix)}:t:{SEP.join(segments)}"

    def all_sessions(self) -> str:
        """A ``SCAN MATCH`` pattern of every session key (the prefix escaped)."""
        return f"{_glob_escape(self.prefix)}:session:*"

    def published(self, idempotency_key: str) -> str:
        """The id a publish with this idempotency key was stored under."""
        return f"{self.prefix}:published:{idempotency_key}"


def _glob_escape(literal: str) -> str:
    """``literal`` with Redis's glob specials escaped."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in literal)


def encode_control(op: str, client_id: str | None, topics: t.Collection[str], node: str) -> bytes:
    """A control message: ``op`` (subscribe, unsubscribe, disconnect, revoke)
    of a client id (``None``: every client, for a revoke), sent by process
    ``node``."""
    message = json.dumps({"op": op, "client": client_id, "topics": sorted(topics), "node": node})
    return b"C " + message.encode()


def parse_event_message(data: bytes) -> tuple[Seq, Audience, str | None, bytes]:
    """The id, audience, target and body of an ``E`` message on the bus.

    :raises ValueError, KeyError, TypeError: a malformed message.
    """
    _, raw_id, audience, length, rest = data.split(b" ", 4)
    size = int(length)
    seq = parse_event_id(raw_id.decode())
    if seq is None:
        raise ValueError(f"malformed event id {raw_id!r}")
    kind = Audience(audience.decode())
    target = rest[:size].decode() if kind is not Audience.ALL else None
    return seq, kind, target, rest[size:]


def decode_message(data: bytes) -> Envelope | dict[str, t.Any] | None:
    """An event, a control message, or ``None`` for anything else.

    :raises ValueError, KeyError, TypeError: a malformed message.
    """
    if data[:2] == b"E ":
        return _stamped(Envelope.encode(*parse_event_message(data)))
    if data[:2] == b"C ":
        message = json.loads(data[2:])
        if not isinstance(message, dict):
            raise TypeError("a control message must be a JSON object")
        return message
    return None


def entry_envelope(entry_id: bytes, fields: dict[bytes, bytes]) -> Envelope:
    """The event of one stream entry."""
    seq = parse_event_id(entry_id.decode())
    if seq is None:
        raise ValueError(f"malformed stream entry id {entry_id!r}")
    kind = Audience(fields[b"k"].decode())
    target = fields[b"t"].decode() if kind is not Audience.ALL else None
    return _stamped(Envelope.encode(seq, kind, target, fields[b"b"]))


def _stamped(envelope: Envelope) -> Envelope:
    # A stream id's first half is Redis's clock at XADD, in milliseconds: the
    # publish time, for the delivery-delay metric, at no cost.
    envelope.at = envelope.seq[0] / 1000
    return envelope


def dump_topics(topics: t.Iterable[str]) -> str:
    return json.dumps(sorted(topics), separators=(",", ":"))


def text(value: t.Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
