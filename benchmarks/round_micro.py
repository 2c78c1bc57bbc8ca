"""Microbenchmark: the CPU a gevent delivery round spends per delivery.

``N`` streams (default 5,000) over Unix socketpairs, each written the way a
stream behind gunicorn writes (its own chunks, from the hub, see
``SSEConnection.send_parked``), parked on one topic; nobody reads them (the
socket buffers hold every event of the run). Each of ``M`` publishes is
followed by its round to the end, so every delivery is one ``send`` of one
event, as in a steady fan-out. The figure is the process's CPU time per
delivery (publish, round and the system call together), median of the
repeats. A socketpair's ``send`` is cheaper than a loopback TCP one, so this
shows the Python around the write better than the end-to-end benchmark.

    python -m benchmarks.round_micro [--streams 5000] [--events 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

SCRIPT = r"""
import gc, json, sys, time
from gevent import monkey
monkey.patch_all()
import gevent, socket
from flask_sse_broker import SSEBroker, SSEConfig
from flask_sse_broker import _wake

class Out:  # what a stream reads of gunicorn's chunked Response
    headers_sent = False
    def __init__(self, sock):
        self.sock = sock
    def send_headers(self):
        self.headers_sent = True

n, m, repeats = map(int, sys.argv[1:4])
broker = SSEBroker(SSEConfig(heartbeat_interval=0, handle_sigterm=False, event_buffer_size=m + 10))
keep = []
for _ in range(n):
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    conn = broker.open_stream(topics=["t"])
    conn._write_to(Out(a))
    gevent.spawn(lambda conn=conn: [None for _ in conn])
    keep.append((a, b))
gevent.sleep(0.1)  # every stream wrote its head and parked
batch = _wake._batch_for(gevent.get_hub())
out = []
for r in range(repeats):
    for _, b in keep:  # empty the buffers between repeats (not measured)
        try:
            while b._sock.recv(1 << 20, socket.MSG_DONTWAIT):
                pass
        except BlockingIOError:
            pass
    gc.collect()
    t0 = time.process_time()
    for i in range(m):
        broker.broadcast_to_topic("t", f"{r}:{i}:payload of a steady fan-out")
        while batch.scheduled or batch.pending:
            gevent.sleep(0.0005)
    out.append((time.process_time() - t0) / (n * m) * 1e6)
print(json.dumps(out))
"""


def measure(streams: int, events: int, repeats: int) -> list[float]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(streams), str(events), str(repeats)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    runs = measure(args.streams, args.events, args.repeats)
    print(
        f"{args.streams} streams, {args.events} events: CPU µs per delivery, median of "
        f"{len(runs)}: {statistics.median(runs):.2f} (runs: {', '.join(f'{x:.2f}' for x in runs)})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
