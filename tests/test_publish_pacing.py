"""A publisher paced by delivery under gevent (issue 13): a publish made from
a greenlet while a delivery round is under way (the round handed the hub back
to I/O mid-way, which is how the publisher got to run) returns at once up to
``_HubBatch.ahead_limit`` publishes (delivered by the next round,
together); the one after them returns only once that round has written.
Never from the hub itself, another native thread, with the broker's lock
held, or in a loop that never yields.

Each case runs in a subprocess with gevent's monkey-patching, streams writing
their own chunks to socketpairs (as behind gunicorn, see test_delivery.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import typing as t

from .support import ROOT

SETUP = r"""
import json, sys
from gevent import monkey
monkey.patch_all()
import gevent, gevent.event, socket
from flask_sse_broker import SSEBroker, SSEConfig
from flask_sse_broker import _wake

class Out:
    headers_sent = True
    def __init__(self, sock):
        self.sock = sock

n = int(sys.argv[1])
broker = SSEBroker(SSEConfig(heartbeat_interval=0, handle_sigterm=False, event_buffer_size=50))
readers = []
for _ in range(n):
    a, b = socket.socketpair()
    conn = broker.open_stream(topics=["t"])
    conn._write_to(Out(a))
    next(conn)
    gevent.spawn(lambda conn=conn: [None for _ in conn])
    readers.append(b)
gevent.sleep(0.05)  # every stream parked
hub = gevent.get_hub()
batch = _wake._batch_for(hub)

def has_data(reader):
    try:  # the real socket: gevent's would wait for data
        return bool(reader._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False

def written():
    return sum(map(has_data, readers))
"""

DURING_A_ROUND = r"""
probe_r, probe_w = socket.socketpair()
seen = {}

def publisher():
    probe_r.recv(1)  # woken by I/O while the round runs
    seen["before"] = written()
    seen["left"] = batch.left
    seen["ahead"] = []
    for i in range(batch.ahead_limit):  # ahead of the round: at once
        broker.broadcast_to_topic("t", f"ahead {i}")
        seen["ahead"].append(written())
    broker.broadcast_to_topic("t", "one more")  # waits for the round's end
    seen["after"] = written()

poked = []
def poke_at_first_send():
    for conn in broker._hub._connections:
        def send_and_poke(send=conn._send_parked):
            if not poked:
                poked.append(probe_w.send(b"x"))
            return send()
        conn._wake.send = send_and_poke

gevent.spawn(publisher)
gevent.sleep(0.01)
poke_at_first_send()
batch.slice = 0.0  # hand the hub back at every chance
broker.broadcast_to_topic("t", "first")
gevent.sleep(1.0)
print(json.dumps({"seen": seen, "written": written()}))
"""

NEVER_WAITS = r"""
import threading
from gevent.monkey import get_original
out = {}
lock = broker._hub.lock

def timed_pace():
    # ``pace`` as the broker calls it, while a round is "under way" and the
    # publishers are already ``ahead_limit`` publishes ahead of it.
    batch.left = 1
    batch.ahead = batch.ahead_limit
    try:
        _wake.pace(lock, limit=5.0)
    finally:
        batch.left = 0
    return batch.ended is None  # nobody waited

# From the hub itself (a callback): waiting there would be an error.
done = gevent.event.Event()
def in_hub():
    try:
        out["hub"] = timed_pace()
    finally:
        done.set()
hub.loop.run_callback(in_hub)
done.wait(5)

# From another native thread.
start_new_thread = get_original("_thread", "start_new_thread")
allocate = get_original("_thread", "allocate_lock")
finished = allocate(); finished.acquire()
def in_thread():
    try:
        out["thread"] = timed_pace()
    finally:
        finished.release()
start_new_thread(in_thread, ())
while not finished.acquire(False):
    gevent.sleep(0.01)

# With the broker's lock held.
with lock:
    out["locked"] = timed_pace()

# A greenlet waits, and is released when the round ends.
batch.left = 1
batch.ahead = batch.ahead_limit
g = gevent.spawn(_wake.pace, lock, 5.0)
gevent.sleep(0.05)
out["greenlet_waits"] = not g.dead and batch.ended is not None
batch._drain()  # nothing left: the round ends
g.join(5)
out["greenlet_released"] = g.dead

# A view publishing in a loop never yields: no round runs between its publishes.
def loop():
    for i in range(20):
        broker.broadcast_to_topic("t", str(i))
    out["written_during_loop"] = written()
gevent.spawn(loop).join(5)
gevent.sleep(0.5)
out["written_after"] = written()
print(json.dumps(out))
"""


def run_probe(script: str, n: int) -> dict[str, t.Any]:
    proc = subprocess.run(
        [sys.executable, "-c", SETUP + script, str(n)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, t.Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_a_publish_during_a_round_returns_after_the_rounds_writes() -> None:
    n = 400
    result = run_probe(DURING_A_ROUND, n)
    seen = result["seen"]
    assert seen["left"] > 0, "the publisher did not run during the round"
    assert 0 < seen["before"] < n
    assert seen["ahead"] and max(seen["ahead"]) < n  # returned at once, the round still under way
    assert seen["after"] == n  # the round of "first" had written to every stream
    assert result["written"] == n


def test_a_publish_never_waits_in_the_hub_another_thread_under_the_lock_or_a_loop() -> None:
    n = 50
    result = run_probe(NEVER_WAITS, n)
    assert result["hub"] is True
    assert result["thread"] is True
    assert result["locked"] is True
    assert result["greenlet_waits"] is True
    assert result["greenlet_released"] is True
    assert result["written_during_loop"] == 0
    assert result["written_after"] == n
