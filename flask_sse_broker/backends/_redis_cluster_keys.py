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
``{P:i.n}:events``
    Its sharded pub/sub channel: ``E <id> <audience> <target length>
    <target><body>`` per event (as the single-Redis bus), ``C {json}``
    control messages (partition 0, and a revoke of a topic on its own).
``{P:i.n}:published:<idempotency key>``
    The id a publish was stored under, for ``idempotency_ttl`` seconds.
"""

from __future__ import annotations

import itertools
import zlib

from redis.crc import key_slot

from .._wire import Audience
from ._cluster_cursor import PARTITIONS

#: As the single-Redis script, with ``SPUBLISH`` on the partition's own
#: channel (KEYS[4], declared: same slot). KEYS[3]: the idempotency key.
PUBLISH_SCRIPT = """
local seen = redis.call('GET', KEYS[3])
if seen then
  return seen
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], ARGV[5], '*',
                      'k', ARGV[2], 't', ARGV[3], 'b', ARGV[4])
redis.call('SET', KEYS[2], id)
redis.call('SET', KEYS[3], id, 'PX', ARGV[6])
redis.call('SPUBLISH', KEYS[4],
           'E ' .. id .. ' ' .. ARGV[2] .. ' ' .. string.len(ARGV[3]) .. ' ' .. ARGV[3] .. ARGV[4])
return id
"""

_SLOTS = 16384


class Partition:
    """One partition's keys, all under one hash tag (one slot)."""

    __slots__ = ("channel", "index", "last", "stream", "tag")

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

    def published(self, idempotency_key: str) -> str:
        return f"{self.tag}:published:{idempotency_key}"


def partition_of(audience: Audience, target: str | None) -> int:
    """The partition of an event: broadcasts in 0, the rest by a stable hash."""
    if audience is Audience.ALL:
        return 0
    return 1 + zlib.crc32(f"{audience.value}:{target}".encode()) % (PARTITIONS - 1)
