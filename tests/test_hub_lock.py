"""Under gevent the hub's lock is a plain OS lock (``_wake.new_lock``): a
greenlet that waited while holding it would block its whole thread for good
the first time another greenlet asked for it. So nothing may switch greenlets
with the lock held (the lock rule of ``_hub``). This drives every kind of
broker work under gevent - streams written from the hub and by their
greenlets, publishes of each kind, heartbeats, subscribe, revoke, overflow,
closed peers, disconnect and shutdown - and fails on any greenlet switch made
while the lock is held."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .support import GEVENT_SCRIPT, ROOT

WORKLOAD = (
    GEVENT_SCRIPT
    + r"""
broker = SSEBroker(SSEConfig(heartbeat_interval=0.05, handle_sigterm=False, event_buffer_size=8))
lock = broker._hub.lock
switches = {"all": 0, "locked": []}

def trace(event, args):
    if event in ("switch", "throw"):
        switches["all"] += 1
        if lock.locked():
            switches["locked"].append(repr(args[1]))

kind = type(lock).__module__ + "." + type(lock).__qualname__
greenlet.settrace(trace)
pairs, streams = [], []
for i in range(40):
    a, b = socket.socketpair()
    conn = broker.open_stream(client_id=f"c{i}", topics=[f"t{i % 4}", "all/*"])
    if i % 2:  # half write their own chunks (from the hub), half through the server loop
        conn._write_to(Out(a))
        streams.append(gevent.spawn(lambda conn=conn: [None for _ in conn]))
    else:
        streams.append(gevent.spawn(lambda conn=conn, a=a: [a.sendall(x) for x in conn]))
    pairs.append((a, b))
gevent.sleep(0.1)
for n in range(30):
    broker.broadcast_to_topic(f"t{n % 4}", {"n": n})
    broker.broadcast_to_topic("all/x", "pattern")
    if n % 5 == 0:
        broker.broadcast("everyone")
        broker.send("c1", "direct")
    gevent.sleep(0.005)
broker.subscribe("c2", "extra")
broker.broadcast_to_topic("extra", "x")
broker.unsubscribe("c2", "extra")
broker.revoke("t1")
for i in range(20):  # more than a queue holds, to a stream nobody reads: overflow
    broker.send("c3", "x" * 100)
pairs[5][1].close()  # a vanished peer: found by a heartbeat
gevent.sleep(0.3)
broker.disconnect("c7")
broker.shutdown(timeout=1)
gevent.joinall(streams, timeout=5)
greenlet.settrace(None)
print(json.dumps({"kind": kind, "switches": switches["all"], "locked": switches["locked"][:5]}))
"""
)


def test_no_greenlet_switches_while_the_hub_lock_is_held() -> None:
    command = [sys.executable, "-c", WORKLOAD]
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("hung: a greenlet waited holding the hub's lock (with an OS lock, a deadlock)")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["kind"] in ("_thread.lock", "_thread.LockType"), result  # not gevent's lock
    assert result["switches"] > 1000  # the workload did switch, a lot
    assert result["locked"] == []
