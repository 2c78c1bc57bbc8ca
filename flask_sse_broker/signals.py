"""Blinker signals, Flask style. Each is sent with the broker as the sender.

Receivers run synchronously in the thread that caused the signal, never under
the broker's lock, so a receiver may call back into the broker.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: A client id's first live connection opened. Keyword: ``client``.
client_connected = _signals.signal("client-connected")
#: A client id's last live connection ended. Keyword: ``client``.
client_disconnected = _signals.signal("client-disconnected")
#: An event was published. Keywords: ``event`` (:class:`SSEEvent`), ``target``
#: (``"all"``, ``"topic"`` or ``"client"``), ``key`` (the topic or client id)
#: and ``queued`` (local connections it was queued for).
event_published = _signals.signal("event-published")
#: A connection's buffer overflowed. Keywords: ``client``, ``connection`` and
#: ``policy`` (``"disconnect"`` or ``"drop_oldest"``).
event_dropped = _signals.signal("event-dropped")
#: A subscription was revoked (:meth:`SSEBroker.revoke`) from a client with a
#: live connection in this process (each process sends it for its own
#: clients). Keywords: ``client`` and ``topics`` (a frozenset of the topics or
#: patterns, as written).
topic_revoked = _signals.signal("topic-revoked")
