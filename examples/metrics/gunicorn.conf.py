"""Gunicorn settings for ``/_sse/metrics`` with several workers.

Run with ``PROMETHEUS_MULTIPROC_DIR`` set to an empty directory that only this
server uses (every worker writes its figures there, and a scrape of any worker
sums them)::

    export PROMETHEUS_MULTIPROC_DIR=/run/myapp-metrics
    gunicorn -c examples/metrics/gunicorn.conf.py -k gevent -w 4 'app:create_app()'
"""

from __future__ import annotations

import glob
import os
import typing as t


def on_starting(server: t.Any) -> None:
    # Figures left by an earlier run of the server would be summed in.
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for path in glob.glob(os.path.join(directory, "*.db")):
            os.remove(path)


def child_exit(server: t.Any, worker: t.Any) -> None:
    # A dead worker's gauges (open streams, clients) must stop counting; its
    # counters stay, since what it published and delivered did happen.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
