"""The cursor ids of the Redis Cluster backend: one position per partition.

On a cluster the history is split into :data:`PARTITIONS` streams, each with
its own sequence of Redis stream ids (``<milliseconds>-<sequence>``). The id
written on an event is the position, in every partition, of the stream that
event belongs to, so the one ``Last-Event-ID`` a browser sends back resumes
all of them (django-eventstream's composite ids, made compact):

``<base>.<p0>.<p1>. ... .<p15>``
    ``base`` is the largest millisecond part of the positions, in base 36;
    each ``p<i>`` is ``base`` minus the partition's milliseconds in base 36,
    followed by ``-<sequence>`` (base 36) when the sequence is not 0, or is
    empty for a partition at its origin (``0-0``: nothing published yet).

Active partitions are a few characters each: about 60 characters when all
sixteen partitions had an event in the last minute, at most about 220 for
partitions idle for years, within ``MAX_ID_LENGTH`` (256). Only ASCII
digits, lowercase letters, ``.`` and ``-``: a valid SSE id.
"""

from __future__ import annotations

import re
import typing as t

from .._wire import Audience, Envelope, Seq, frame, parse_event_id
from ._redis_keys import text

#: History partitions: each a stream and a sharded channel under one hash
#: tag, so one Lua script appends and publishes an event on one shard. Fixed:
#: a cursor lists all of them, and changing it invalidates every cursor.
PARTITIONS = 16

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_BASE = re.compile(r"\A[0-9a-z]{1,13}\Z")
_PIECE = re.compile(r"\A([0-9a-z]{1,13})(?:-([0-9a-z]{1,13}))?\Z")
_MAX_PART = 2**64 - 1
ORIGIN: Seq = (0, 0)


def _b36(value: int) -> str:
    if value == 0:
        return "0"
    digits = []
    while value:
        value, rest = divmod(value, 36)
        digits.append(_DIGITS[rest])
    return "".join(reversed(digits))


def encode_cursor(positions: t.Sequence[Seq]) -> str:
    """The id naming ``positions`` (one per partition)."""
    base = max(ms for ms, _ in positions)
    pieces = [_b36(base)]
    for ms, seq in positions:
        if ms == 0 and seq == 0:
            pieces.append("")
        elif seq:
            pieces.append(f"{_b36(base - ms)}-{_b36(seq)}")
        else:
            pieces.append(_b36(base - ms))
    return ".".join(pieces)


def parse_cursor(value: str) -> list[Seq] | None:
    """The positions named by a cursor id, or ``None`` for anything that is
    not one (a forged, truncated or single-Redis id)."""
    pieces = value.split(".")
    if len(pieces) != PARTITIONS + 1 or not _BASE.match(pieces[0]):
        return None
    base = int(pieces[0], 36)
    if base > _MAX_PART:
        return None
    positions: list[Seq] = []
    for piece in pieces[1:]:
        if not piece:
            positions.append(ORIGIN)
            continue
        match = _PIECE.match(piece)
        if match is None:
            return None
        delta = int(match.group(1), 36)
        seq = int(match.group(2), 36) if match.group(2) else 0
        if delta > base or seq > _MAX_PART:
            return None
        positions.append((base - delta, seq))
    return positions


def replay_envelopes(want: list[Seq], missed: list[tuple[int, list[t.Any]]]) -> list[Envelope]:
    """The events a resume replays (``missed``: per partition index, its
    stream entries after ``want``), merged across partitions by stream id,
    each with the cursor after it."""
    merged = sorted(
        (parse_event_id(text(entry_id)) or ORIGIN, index, fields)
        for index, entries in missed
        for entry_id, fields in entries
    )
    cursor = list(want)
    envelopes = []
    for seq, index, fields in merged:
        cursor[index] = seq
        kind = Audience(fields[b"k"].decode())
        target = fields[b"t"].decode() if kind is not Audience.ALL else None
        envelope = Envelope(ORIGIN, kind, target, frame(fields[b"b"], encode_cursor(cursor)))
        envelope.at = seq[0] / 1000
        envelopes.append(envelope)
    return envelopes
