"""What a stream knows about its socket: the write-stall limit and the
dead-peer check.

Under WSGI a stream only learns its peer is gone when a write fails. These two
make that happen soon: the kernel gives up on unacknowledged data after
``write_timeout``, and each heartbeat pass first looks which peers have
already closed their end: one ``poll`` over every stream's socket
(:func:`closed_peers`), then the exact check (:func:`peer_closed`) on the few
it flags, instead of a ``getsockopt`` per stream per heartbeat. Without
``poll`` (Windows) each stream checks its own peer before it writes a
heartbeat (:data:`CHECK_BEFORE_HEARTBEAT`).
"""

from __future__ import annotations

import contextlib
import select
import socket
import typing as t

#: ``recv`` flags of the dead-peer check, as a plain int: ``MSG_PEEK |
#: MSG_DONTWAIT`` on the ``IntFlag`` members runs ``Flag.__or__`` every time.
_PEEK_FLAGS = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)
#: ``getsockopt`` level and option reading a TCP socket's state (Linux), and
#: the state in which the peer has neither closed nor reset its end.
_IPPROTO_TCP = int(socket.IPPROTO_TCP)
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
_TCP_ESTABLISHED = b"\x01"
#: Bounds how long written data may stay unacknowledged (Linux).
_TCP_USER_TIMEOUT: int | None = getattr(socket, "TCP_USER_TIMEOUT", None)
#: ``poll`` events after which a socket gets the exact check: readable (data,
#: or the EOF of a peer that closed), the peer's half-close, hang-up, error.
_SUSPECT = (
    getattr(select, "POLLIN", 0)
    | getattr(select, "POLLPRI", 0)
    | getattr(select, "POLLRDHUP", 0)
    | getattr(select, "POLLHUP", 0)
    | getattr(select, "POLLERR", 0)
    | getattr(select, "POLLNVAL", 0)
)
#: Whether a stream checks its own peer before each heartbeat it writes: only
#: where the heartbeat pass cannot ``poll`` every socket at once.
CHECK_BEFORE_HEARTBEAT = not hasattr(select, "poll")


def limit_write_stall(sock: t.Any, timeout: float | None) -> None:
    """Bound how long the kernel keeps ``sock`` alive while written data goes
    unacknowledged.

    A write to a peer that stopped reading (or vanished without a FIN) blocks
    until TCP gives up, which by default takes many minutes or never happens.
    ``TCP_USER_TIMEOUT`` makes it fail after ``timeout``, zero-window probes
    included. Does nothing without a socket, a timeout or the option.
    """
    if sock is not None and timeout and _TCP_USER_TIMEOUT is not None:
        # Not a TCP socket (a unix socket, a test client): nothing to bound.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, int(timeout * 1000))


def abort(sock: t.Any) -> None:
    """End the connection of ``sock`` at once, from any thread.

    ``shutdown`` (unlike ``close``) reaches a write blocked in the kernel on a
    peer that stopped reading: the write fails with ``EPIPE`` and the server
    ends the response. Under gevent, the cooperative socket's ``shutdown``
    also wakes the greenlet waiting to write. Does nothing without a socket.
    """
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.shutdown(socket.SHUT_RDWR)


def peer_closed(sock: t.Any) -> bool:
    """Whether the peer of ``sock`` has closed its end (EOF or reset).

    A write to a socket whose peer just closed usually succeeds - only the
    next one fails - so without this a dead client would be found after two
    heartbeats instead of one. The peek never blocks: it only runs on a
    socket with no timeout (``MSG_DONTWAIT``) or a non-blocking one. ``False``
    when there is no socket to look at.
    """
    if sock is None:
        return False
    raw = getattr(sock, "_sock", sock)  # under gevent, the real socket inside
    try:
        if raw.gettimeout() not in (None, 0.0):
            return False
        if _TCP_INFO is not None:
            # The common case without the peek's EAGAIN exception: a TCP
            # socket still ESTABLISHED has had no FIN and no reset, so the
            # peek could only find data or nothing. Any other state (or a
            # socket that is not TCP) gets the peek.
            try:
                if raw.getsockopt(_IPPROTO_TCP, _TCP_INFO, 1) == _TCP_ESTABLISHED:
                    return False
            except OSError:
                pass
        return bool(raw.recv(1, _PEEK_FLAGS) == b"")
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:  # reset by the peer, or already closed here
        return True


def closed_peers(socks: t.Sequence[t.Any]) -> list[int]:
    """The indexes in ``socks`` of the sockets whose peer has closed its end
    (EOF or reset), by :func:`peer_closed`, which only the sockets that one
    non-blocking ``poll`` of them all flags get (a readable or hung-up
    socket): an idle live stream costs no system call of its own.

    Safe from any thread: a socket closed meanwhile is skipped or found
    closed. Empty without ``poll``.
    """
    make_poll = _real_poll()
    if make_poll is None:
        return []
    poller = make_poll()
    register = poller.register
    index: dict[int, int] = {}
    for i, sock in enumerate(socks):
        try:
            # Under gevent the real socket inside: its ``fileno`` is C.
            fd = getattr(sock, "_sock", sock).fileno()
        except (OSError, AttributeError, ValueError):
            continue
        if fd >= 0:
            register(fd, _SUSPECT)
            index[fd] = i
    if not index:
        return []
    return [index[fd] for fd, _ in poller.poll(0) if peer_closed(socks[index[fd]])]


def _real_poll() -> t.Callable[[], t.Any] | None:
    """``select.poll`` as the OS provides it: gevent's patched one would start
    a watcher per socket; a zero-timeout poll never blocks anyway."""
    if not hasattr(select, "poll"):
        return None
    with contextlib.suppress(ImportError):
        from gevent import monkey

        return t.cast(t.Callable[[], t.Any], monkey.get_original("select", "poll"))
    return select.poll
