"""What the Redis Cluster backend writes: the partitions' keys and channel,
and the publish script. Every name is built here.

Partition ``i`` of prefix ``P`` lives under the hash tag ``{P:i.n}``, ``n``
the first number that puts the tag's slot in the ``i``-th sixteenth of the
16384 slots, so the partitions spread evenly over the primaries:

``{P:i.n}:stream``
    The partition's history, a Redis Stream capped at about ``history_size``
    entries (one more, so a cursor's own entry stays to prove nothing after
    it was trimmed).
``{P:i.n}:last``
    The partition's newest id (the stream may be trimmed to nothing).
``{P:i.n}:t:<topic>``, ``{P:i.n}:c:<client id>``, ``{P:0.n}:all``
    The sharded pub/sub channels of a topic, of a client's direct sends (both
    in the partition the name hashes to) and of broadcasts and control
    messages (partition 0): ``E <id> <audience> <target length>
    <target><body>`` per event (as the single-Redis bus), ``C {json}`` control
    messages. A process holds only those it has local recipients for.
``{P:i.n}:events``
    The partition-wide channel: every event of the partition once more, for
    the processes holding a topic *pattern* (sharded pub/sub has no pattern
    subscribe). Publishing to it while no process holds a pattern costs Redis
    a dictionary lookup.
``{P:i.n}:published:<idempotency key>``
    The id a publish was stored under, for ``idempotency_ttl`` seconds.
"""

from __future__ import annotations

import itertools
import zlib

from redis.crc import key_slot

from .._wire import Audience
from ._cluster_cursor import PARTITIONS
from ._redis_keys import RedisKeys

#: As the single-Redis script, with ``SPUBLISH`` on the event's own channel
#: (KEYS[4]) and the partition-wide one (KEYS[5]; declared: same slot).
#: KEYS[3]: the idempotency key.
PUBLISH_SCRIPT = """
local seen = redis.call('GET', KEYS[3])
if seen then
  return seen
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], ARGV[5], '*',
                      'k', ARGV[2], 't', ARGV[3], 'b', ARGV[4])
redis.call('SET', KEYS[2], id)
redis.call('SET', KEYS[3], id, 'PX', ARGV[6])
local message = 'E ' .. id .. ' ' .. ARGV[2] .. ' ' .. string.len(ARGV[3]) .. ' ' .. ARGV[3] .. ARGV[4]
redis.call('SPUBLISH', KEYS[4], message)
if KEYS[5] ~= KEYS[4] then
  redis.call('SPUBLISH', KEYS[5], message)
end
return id
"""

_SLOTS = 16384


class Partition:
    """One partition's keys, all under one hash tag (one slot)."""

    __slots__ = ("channel", "index", "keys", "last", "stream", "tag")

    def __init__(self, prefix: str, index: int) -> None:
        low, high = index * _SLOTS // PARTITIONS, (index + 1) * _SLOTS // PARTITIONS
        for n in itertools.count():
            tag = f"{prefix}:{index}.{n}"
            if low <= key_slot(tag.encode()) < high:
                break
        self.index = index
        self.tag = "{" + tag + "}"
        self.stream = f"{self.tag}:stream"
        self.last = f"{self.tag}:last"
        self.channel = f"{self.tag}:events"
        #: The routed channels' names, as the single-Redis backend's.
        self.keys = RedisKeys(self.tag)

    def published(self, idempotency_key: str) -> str:
        return f"{self.tag}:published:{idempotency_key}"


def tag_of(channel: bytes) -> bytes:
    """The hash tag a channel name starts with (``{...}``)."""
    return channel[: channel.index(b"}") + 1]


def partition_of(audience: Audience, target: str | None) -> int:
    """The partition of an event: broadcasts in 0, the rest by a stable hash."""
    if audience is Audience.ALL:
        return 0
    return 1 + zlib.crc32(f"{audience.value}:{target}".encode()) % (PARTITIONS - 1)


def channel_of(partitions: list[Partition], audience: Audience, target: str | None) -> str:
    """The routed channel an event is published on."""
    keys = partitions[partition_of(audience, target)].keys
    return keys.all if audience is Audience.ALL else keys.channel(audience, target)
