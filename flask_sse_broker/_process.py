"""The process around the brokers: exit, SIGTERM and fork.

Brokers register a shutdown callable here; at interpreter exit and on SIGTERM
every registered one still alive is called. Gunicorn gives a worker no hook
before its graceful period: without the SIGTERM handler, open streams hold the
worker until ``graceful_timeout`` kills it.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import typing as t
import weakref

from ._wake import gevent_patched

logger = logging.getLogger("flask_sse_broker")

#: Shutdown callables of live brokers, each taking a timeout in seconds. Weak:
#: a broker nobody references any more is not kept alive for its exit.
_shutdowns: list[weakref.WeakMethod[t.Callable[[float], None]]] = []
_shutdowns_lock = threading.Lock()
#: The process the SIGTERM handler was installed in: a forked worker (gunicorn
#: ``--preload``) inherits the flag but not the handler, which gunicorn resets.
_sigterm_pid: int | None = None


def register_shutdown(method: t.Callable[[float], None]) -> None:
    """Call the bound ``method(timeout)`` at exit and on SIGTERM while its
    object lives. It must do nothing when there is nothing to end (not
    started, already closing, or inherited from the parent of a fork)."""
    with _shutdowns_lock:
        _shutdowns[:] = [ref for ref in _shutdowns if ref() is not None]
        _shutdowns.append(weakref.WeakMethod(method))


def shutdown_all(timeout: float = 2.0) -> None:
    """Run every registered shutdown."""
    with _shutdowns_lock:
        methods = [ref() for ref in _shutdowns]
    for method in methods:
        if method is not None:
            method(timeout)


atexit.register(shutdown_all, 0.5)


def install_sigterm_handler() -> bool:
    """End every stream of every broker on SIGTERM, then run the handler that
    was there before (gunicorn's graceful exit, or the default).

    Only the main thread may set a signal handler: elsewhere this does
    nothing. Returns whether the handler was installed (once per process).
    """
    global _sigterm_pid
    if _sigterm_pid == os.getpid():
        return False
    previous = signal.getsignal(signal.SIGTERM)
    pid = os.getpid()

    def on_sigterm(signum: int, frame: t.Any) -> None:
        if os.getpid() == pid:
            logger.info("SIGTERM: ending SSE streams")
            if callable(previous):
                # Runs at any point of the main thread, possibly inside the lock
                # of a broker: do the work elsewhere.
                spawn(shutdown_all)
                previous(signum, frame)
                return
            helper = threading.Thread(target=shutdown_all, args=(1.0,), daemon=True)
            helper.start()
            helper.join(1.5)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread (a gthread request, say)
        return False
    _sigterm_pid = pid
    return True


def spawn(target: t.Callable[..., None], *args: t.Any) -> None:
    """Run ``target`` soon, in a new greenlet under gevent, else a thread."""
    if gevent_patched():
        import gevent

        gevent.spawn(target, *args)
    else:
        threading.Thread(target=target, args=args, daemon=True).start()


class ForkWatch:
    """Notices that the process forked since it was made or last reset.

    A forked worker (gunicorn ``--preload``) inherits a broker's registries,
    a lock another thread may have held and a backend's sockets, but none of
    its threads: whoever owns them checks :meth:`forked` before using them.
    """

    __slots__ = ("pid",)

    def __init__(self) -> None:
        self.pid = os.getpid()

    def forked(self) -> bool:
        """Whether this is a child forked since; resets to the child."""
        pid = os.getpid()
        if pid == self.pid:
            return False
        self.pid = pid
        return True
