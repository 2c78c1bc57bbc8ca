"""How a stream waits for its queue: the per-connection wake-up.

A stream with nothing queued blocks until a publisher queues something for it.
With threads that is a :class:`threading.Event` per connection. Under gevent,
an ``Event`` per connection costs a hub callback, a list of links and a
``Waiter`` per wake-up - the largest single cost of a fan-out to thousands of
streams. :class:`GreenletWake` keeps the ``Event`` interface the broker uses
(``set``, ``clear``, ``wait``) but parks the waiting greenlet on the hub
directly, and every wake-up of one publish shares one hub callback that
switches to each woken greenlet in turn: a publish to 5,000 idle streams costs
the publisher a list append per stream, and each stream one greenlet switch.

The callback is not run at once but in rounds, each ``_HubBatch.delay`` (2 ms)
after the first wake-up it holds: the publishes of a burst land in the queues
first, and every stream then writes all of them in one call instead of waking,
and writing, once per publish.

The broker calls ``set`` and ``clear`` with its lock held, and ``wait``
without it, exactly as it uses an ``Event``.

A round need not switch to a woken greenlet at all: a stream that can write
without blocking (a socket it frames chunks for itself, see
:meth:`SSEConnection._write_to`) gives its wake-up a ``send``, and the round
calls it in the hub instead, leaving the greenlet parked. Switching into
thousands of greenlets, each deep in the server's request loop, was the
largest cost of a delivery after the write itself.
"""

from __future__ import annotations

import threading
import typing as t
import weakref
from collections import deque
from time import perf_counter as _perf_counter

__all__ = ["Wake", "flush", "gevent_patched", "new_wake"]


class Wake(t.Protocol):
    """What a stream waits on: the part of :class:`threading.Event` it uses.
    ``set`` and ``clear`` are called with the hub's lock held, ``wait``
    without it."""

    def set(self) -> None: ...

    def clear(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


def new_wake(batched: bool = True) -> Wake:
    """A wake-up for one connection: a :class:`GreenletWake` when gevent has
    patched ``threading`` (and ``batched``), else a :class:`threading.Event`."""
    if batched and gevent_patched():
        return GreenletWake()
    return threading.Event()


_patched = False
_get_hub: t.Any = None
_getcurrent: t.Any = None


def gevent_patched() -> bool:
    """Whether gevent has monkey-patched ``threading`` in this process."""
    global _patched
    if _patched:
        return True
    global _get_hub, _getcurrent
    try:
        from gevent import get_hub, monkey
        from greenlet import getcurrent
    except ImportError:
        return False
    _get_hub, _getcurrent = get_hub, getcurrent
    _patched = bool(monkey.is_module_patched("threading"))
    return _patched


class _HubBatch:
    """The wake-ups of one hub not yet delivered, drained by one callback.

    One deque, never swapped: a wake-up appended while a drain runs is seen by
    that drain or by the callback its ``add`` scheduled, whichever thread
    appended it.
    """

    def __init__(self, hub: t.Any) -> None:
        from gevent.monkey import get_original

        self.hub = hub
        self.loop = hub.loop
        self._get_ident = get_original("_thread", "get_ident")
        self.ident = self._get_ident()
        self.pending: deque[GreenletWake] = deque()
        self.scheduled = False
        #: The armed timer of the deferred drain, if any. A new watcher each
        #: time: a libev timer restarted without being reset fires at once.
        self.timer: t.Any = None
        #: Wake-ups of the current round not yet resumed.
        self.left = 0
        from gevent import getswitchinterval

        #: Longest run of a round before the hub polls I/O again.
        self.slice = min(getswitchinterval(), self.max_slice)
        #: Publishers of this hub waiting for a reply (see :func:`awaiting_reply`).
        self.awaited = 0

    #: Upper bound of :attr:`slice` (seconds): a publish arriving during a
    #: round waits at most about this long for the hub. Writing from the hub
    #: (``GreenletWake.send``) makes a round dense; with gevent's 5 ms switch
    #: interval the publishes of a steady 5,000-stream fan-out fell behind
    #: their schedule (publish round trip p90 173-315 ms against 87-100 ms
    #: with 1 ms).
    max_slice = 0.001

    #: Seconds a wake-up waits for more publishes to join it, from the first
    #: wake-up of a round (or the end of the previous round). Bounds the
    #: latency added to a quiet stream.
    delay = 0.002

    def add(self, wake: GreenletWake) -> None:
        self.pending.append(wake)
        if not self.scheduled:
            self.scheduled = True
            if self._get_ident() == self.ident:
                self._arm()
            else:  # a publisher in another native thread: no timer from there
                self.loop.run_callback_threadsafe(self.run)

    def _arm(self) -> None:
        # A new watcher each time: a libev timer restarted without being
        # reset fires at once. ``update``: count from now, not the last poll.
        timer = self.timer = self.loop.timer(self.delay)
        timer.start(self.run, update=True)

    def flush(self) -> None:
        """Drain at the hub's next turn instead of after the delay (a queue is
        filling up: its stream must run before the publisher's next event)."""
        timer = self.timer
        if timer is not None and self.pending:
            self.timer = None
            timer.close()
            self.loop.run_callback(self.run)

    def run(self) -> None:
        """In the hub: start a round, which resumes the streams woken so far.

        A stream woken again during a round waits for the next one, ``delay``
        after this one ends: while the streams write, the publisher keeps
        queueing, and each stream's next write carries all of it.
        """
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.close()
        self.left = len(self.pending)
        self._drain()

    def _drain(self) -> None:
        """Resume the round's greenlets that are still parked.

        Like gevent's own callback loop, it hands the hub back to I/O after a
        slice (at most :attr:`max_slice`) and goes on after the next poll, so
        a publisher is not kept waiting behind thousands of streams.
        """
        pending = self.pending
        clock = _perf_counter
        stop = clock() + self.slice
        count = 0
        left = self.left
        while left > 0:
            try:
                wake = pending.popleft()
            except IndexError:
                break
            left -= 1
            glet = wake._parked
            if glet is None or not wake._flag:
                continue  # woken already, or by something else
            send = wake.send
            # ``send`` writes without leaving the hub (the greenlet stays
            # parked) or says the greenlet must run.
            if send is None or not send():
                wake._parked = None
                try:
                    glet.switch()
                except Exception:  # pragma: no cover - greenlets handle their own errors
                    self.hub.handle_error(glet, *_exc_info())
            count += 1
            if not count & 31 and left and (self.awaited or clock() > stop):
                self.left = left
                timer = self.loop.timer(0.0)
                timer.start(self._resume, timer)
                return
        self.left = 0
        self.scheduled = False
        if pending:
            self.scheduled = True
            self._arm()

    def _resume(self, timer: t.Any) -> None:
        timer.close()
        self._drain()


def _exc_info() -> tuple[t.Any, ...]:
    import sys

    return sys.exc_info()


_batches: weakref.WeakKeyDictionary[t.Any, _HubBatch] = weakref.WeakKeyDictionary()


_last: _HubBatch | None = None


def _batch_for(hub: t.Any) -> _HubBatch:
    global _last
    last = _last
    if last is not None and last.hub is hub:
        return last
    batch = _batches.get(hub)
    if batch is None:
        batch = _batches[hub] = _HubBatch(hub)
    _last = batch
    return batch


def flush() -> None:
    """Run the wake-ups pending on this thread's hub at its next turn."""
    last = _last
    if last is not None and last.ident == last._get_ident():
        last.flush()


def awaiting_reply() -> _HubBatch | None:
    """Call before a publisher waits for a reply it needs (a Redis round
    trip), and :func:`replied` with the result after it: meanwhile a round
    hands the hub back to I/O every 32 switches instead of every switch
    interval, so the reply is read within a fraction of a millisecond and the
    publish completes in the round, as an in-process one does."""
    last = _last
    if last is None or last.ident != last._get_ident():
        return None
    last.awaited += 1
    return last


def replied(batch: _HubBatch | None) -> None:
    if batch is not None:
        batch.awaited -= 1


class GreenletWake:
    """An ``Event`` for the one greenlet that waits on it (its stream)."""

    __slots__ = ("_batch", "_flag", "_parked", "send")

    def __init__(self) -> None:
        self._flag = False
        #: The greenlet waiting, while it is parked on its hub.
        self._parked: t.Any = None
        self._batch: _HubBatch | None = None
        #: Called in the hub, in place of resuming the parked greenlet, by a
        #: round that finds it woken: it does the stream's work itself if it
        #: can without blocking (:meth:`SSEConnection._send_parked`) and says
        #: whether it did. If so the greenlet stays parked, re-armed by
        #: ``send``; if not, the round resumes it.
        self.send: t.Callable[[], bool] | None = None

    def is_set(self) -> bool:
        return self._flag

    def clear(self) -> None:
        self._flag = False

    def set(self) -> None:
        if self._flag:
            return
        self._flag = True
        batch = self._batch
        if batch is not None:
            batch.add(self)

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is not None:  # not used by the broker; keep the Event contract
            return self._wait_timeout(timeout)
        while not self._flag:
            batch = _batch_for(_get_hub())
            self._parked = _getcurrent()
            self._batch = batch
            try:
                # Publish parked, then look again: a ``set`` from another
                # native thread sees the batch, or this sees its flag.
                if not self._flag:
                    batch.hub.switch()
            finally:
                self._parked = None
                self._batch = None
        return True

    def _wait_timeout(self, timeout: float) -> bool:
        import gevent

        with gevent.Timeout(timeout, False):
            return self.wait()
        return self._flag
