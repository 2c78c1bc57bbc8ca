"""Start, pin, measure and stop the servers under test.

Every server is a child process of the benchmark, bound to 127.0.0.1 on a free
port and pinned to CPU 0 (the load generator takes CPU 1). Only the processes
started here are ever signalled.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

from .procstats import children, cpu_seconds, descendants, free_port, rss_bytes

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU = 0
LOADGEN_CPU = 1


@dataclass
class Impl:
    """One server under test: how to start it and its two URLs."""

    name: str
    label: str
    #: ``stream`` path template with ``{topic}``.
    stream: str
    publish: str = "/publish?topic={topic}"
    #: Whether the measured process is a child of the started one.
    forked_worker: bool = True
    needs: tuple[str, ...] = ()
    extra: dict[str, t.Any] = field(default_factory=dict)

    def available(self) -> str | None:
        """``None`` when it can run here, else why not."""
        for module in self.needs:
            try:
                __import__(module)
            except ImportError:
                return f"python module {module} missing"
        if self.name == "nchan" and not (shutil.which("nginx") and Path(NCHAN_MODULE).exists()):
            return "nginx or libnginx-mod-nchan missing"
        if self.name == "flask-sse" and not shutil.which("redis-server"):
            return "redis-server missing"
        return None


def _gunicorn(app: str, worker: str, port: int, workers: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-k",
        worker,
        "-w",
        str(workers),
        "--worker-connections",
        "30000",
        "--backlog",
        "4096",
        "--timeout",
        "120",
        "--graceful-timeout",
        "3",
        "--log-level",
        "warning",
        "-b",
        f"127.0.0.1:{port}",
        app,
    ]


#: The revision ``ours-head`` runs (``BENCH_BASE_REV``, default ``HEAD``): the
#: "before" of a before/after in one run.
BASE_REV = os.environ.get("BENCH_BASE_REV", "HEAD")


class _Impls(dict[str, Impl]):
    """The servers by name; ``ours@<rev>`` is the library at any git revision
    (``git archive``), so several revisions run side by side in one sitting."""

    def __missing__(self, name: str) -> Impl:
        if name.startswith("ours@"):
            rev = name.split("@", 1)[1]
            label = f"flask-sse-broker at git {rev}"
            impl = Impl(name, label, "/_sse/connect?topics={topic}", extra={"package_from": rev})
            self[name] = impl
            return impl
        raise KeyError(name)


IMPLS = _Impls(
    {
        "ours": Impl("ours", "flask-sse-broker (gunicorn gevent)", "/_sse/connect?topics={topic}"),
        "ours-pywsgi": Impl(
            "ours-pywsgi", "flask-sse-broker (gunicorn gevent_pywsgi)", "/_sse/connect?topics={topic}"
        ),
        "ours-event": Impl(
            "ours-event",
            "flask-sse-broker, an Event per stream (before)",
            "/_sse/connect?topics={topic}",
            extra={"env": {"BENCH_WAKE": "event"}},
        ),
        "ours-head": Impl(
            "ours-head",
            f"flask-sse-broker at git {BASE_REV} (before)",
            "/_sse/connect?topics={topic}",
            extra={"package_from": BASE_REV},
        ),
        "ours-metrics": Impl(
            "ours-metrics",
            "flask-sse-broker with SSE_METRICS on",
            "/_sse/connect?topics={topic}",
            needs=("prometheus_client",),
            extra={"env": {"BENCH_METRICS": "1"}},
        ),
        "ours-redis": Impl(
            "ours-redis",
            "flask-sse-broker + Redis backend (1 worker)",
            "/_sse/connect?topics={topic}",
            needs=("redis",),
            extra={"redis": True},
        ),
        "ours-redis-head": Impl(
            "ours-redis-head",
            f"flask-sse-broker + Redis backend at git {BASE_REV} (before)",
            "/_sse/connect?topics={topic}",
            needs=("redis",),
            extra={"redis": True, "package_from": BASE_REV},
        ),
        "ours-redis-w2": Impl(
            "ours-redis-w2",
            "flask-sse-broker + Redis backend (2 workers)",
            "/_sse/connect?topics={topic}",
            needs=("redis",),
            extra={"redis": True, "workers": 2},
        ),
        "handwritten": Impl(
            "handwritten", "hand-written Flask + queue.Queue (gunicorn gevent)", "/stream?topic={topic}"
        ),
        "handwritten-pywsgi": Impl(
            "handwritten-pywsgi",
            "hand-written Flask + queue.Queue (gunicorn gevent_pywsgi)",
            "/stream?topic={topic}",
        ),
        "starlette": Impl(
            "starlette",
            "sse-starlette (uvicorn)",
            "/stream?topic={topic}",
            forked_worker=False,
            needs=("sse_starlette", "uvicorn"),
        ),
        "nchan": Impl("nchan", "nginx + Nchan", "/sub?topic={topic}", "/pub?topic={topic}"),
        "flask-sse": Impl(
            "flask-sse",
            "flask-sse + Redis (gunicorn gevent)",
            "/stream?channel={topic}",
            needs=("flask_sse",),
        ),
    }
)

#: The shared Redis of this machine (``ours-redis``): keys under a prefix of
#: the run's own, deleted afterwards; never flushed.
REDIS_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")

NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
NCHAN_CONF = """\
load_module {module};
worker_processes 1;
worker_rlimit_nofile 65000;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 30000; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    nchan_max_reserved_memory 256M;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /sub {{
            nchan_subscriber eventsource;
            nchan_channel_id $arg_topic;
            nchan_eventsource_ping_interval {heartbeat};
            nchan_subscriber_first_message newest;
        }}
        location = /pub {{
            nchan_publisher;
            nchan_channel_id $arg_topic;
            nchan_message_buffer_length 1000;
            nchan_message_timeout 5m;
        }}
    }}
}}
"""


class Running:
    """A started server: its process tree, the worker measured, and cleanup."""

    def __init__(self, impl: Impl, heartbeat: float, env: dict[str, str] | None = None) -> None:
        self.impl = impl
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix=f"sse-bench-{impl.name}-")
        self.extra: list[subprocess.Popen[bytes]] = []
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(ROOT) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.env["BENCH_HEARTBEAT"] = str(heartbeat)
        self.env.update(impl.extra.get("env", {}))
        self.env.update(env or {})
        self.heartbeat = heartbeat
        self.redis_prefix: str | None = None
        self.redis_pid: int | None = None
        self.cwd = str(ROOT)
        if impl.extra.get("redis"):
            self._use_shared_redis()
        if impl.extra.get("package_from"):
            self.cwd = self._package_snapshot(impl.extra["package_from"])
        self.log = open(os.path.join(self.tmp, "server.log"), "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self._command(),
            cwd=self.cwd,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=_pin_server,
        )
        self.pid = self._wait_ready()
        self.profiler: subprocess.Popen[bytes] | None = None
        out = os.environ.get("BENCH_PYSPY")
        if out and impl.name.startswith("ours"):
            # Collapsed stacks of the worker for flame graphs (profiling runs only).
            self.profiler = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--format",
                    "raw",
                    "--rate",
                    "250",
                    "--nonblocking",
                    "-p",
                    str(self.pid),
                    "-o",
                    f"{out}-{impl.name}-{self.port}.txt",
                ],
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )

    def _use_shared_redis(self) -> None:
        """Point the app at the shared Redis under a prefix of its own; its
        keys are deleted (SCAN + DEL of that prefix only) in :meth:`stop`."""
        import redis

        # A caller may hand a prefix over from a server it replaces (a deploy).
        self.redis_prefix = self.env.get("SSE_REDIS_PREFIX_REUSE") or f"sse-bench-{os.getpid()}-{self.port}"
        self.env["SSE_REDIS_URL"] = REDIS_URL
        self.env["SSE_REDIS_PREFIX"] = self.redis_prefix
        client = redis.Redis.from_url(REDIS_URL)
        try:
            # Its CPU is part of every delivery's cost; it is shared and not
            # pinned, so it also carries whatever else uses it meanwhile.
            self.redis_pid = int(client.info("server")["process_id"])
        finally:
            client.close()

    def _drop_redis_keys(self) -> None:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"{self.redis_prefix}:*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])
        finally:
            client.close()

    def _package_snapshot(self, rev: str) -> str:
        """The library as committed at ``rev``, extracted beside the server's
        temporary files; the server runs from there, so it imports that copy."""
        archive = subprocess.run(
            ["git", "archive", rev, "flask_sse_broker"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", self.tmp], input=archive, check=True)
        return self.tmp

    def _command(self) -> list[str]:
        name = self.impl.name
        workers = int(self.impl.extra.get("workers", 1))
        if name.startswith("ours") and name != "ours-pywsgi":
            return _gunicorn("benchmarks.apps.ours:app", "gevent", self.port, workers)
        if name == "ours-pywsgi":
            return _gunicorn("benchmarks.apps.ours:app", "gevent_pywsgi", self.port)
        if name == "handwritten":
            return _gunicorn("benchmarks.apps.handwritten:app", "gevent", self.port)
        if name == "handwritten-pywsgi":
            return _gunicorn("benchmarks.apps.handwritten:app", "gevent_pywsgi", self.port)
        if name == "flask-sse":
            redis_port = free_port()
            self.extra.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--bind",
                        "127.0.0.1",
                        "--port",
                        str(redis_port),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--maxclients",
                        "30000",
                        "--dir",
                        self.tmp,
                    ],
                    stdout=self.log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_pin_server,
                )
            )
            self.env["BENCH_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            _wait_port(redis_port)
            return _gunicorn("benchmarks.apps.flasksse:app", "gevent", self.port)
        if name == "starlette":
            return [
                sys.executable,
                "-m",
                "uvicorn",
                "benchmarks.apps.starlette:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
                "--log-level",
                "warning",
                "--backlog",
                "4096",
                "--timeout-keep-alive",
                "60",
            ]
        if name == "nchan":
            conf = os.path.join(self.tmp, "nginx.conf")
            with open(conf, "w") as f:
                f.write(
                    NCHAN_CONF.format(
                        module=NCHAN_MODULE,
                        tmp=self.tmp,
                        port=self.port,
                        heartbeat=max(1, int(self.heartbeat)),
                    )
                )
            return ["nginx", "-p", self.tmp, "-c", conf, "-e", os.path.join(self.tmp, "error.log")]
        raise ValueError(name)

    def _wait_ready(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.impl.name} exited: {self.read_log()}")
            if _port_open(self.port):
                if not self.impl.forked_worker:
                    return self.proc.pid
                kids = children(self.proc.pid)
                if len(kids) >= int(self.impl.extra.get("workers", 1)):
                    self.workers = kids
                    return kids[0]
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.impl.name} did not start: {self.read_log()}")

    def tree(self) -> list[int]:
        """Every process of the server: the one started and all its
        descendants (gunicorn's master and workers, nginx's master and
        workers, uvicorn's one process), read afresh at each call."""
        return descendants(self.proc.pid)

    def worker_pids(self) -> list[int]:
        """The workers only (gunicorn's, nginx's; uvicorn's one process): what
        the idle figure counted before it counted the whole tree."""
        return list(getattr(self, "workers", None) or [self.pid])

    def measured_pids(self) -> list[int]:
        """What ``top`` would show for the whole server: every process of its
        tree (master included), plus helpers that do the delivery work (Redis
        for flask-sse and for our Redis mode)."""
        pids = self.tree()
        if self.redis_pid is not None:
            pids.append(self.redis_pid)
        return [*pids, *(p.pid for p in self.extra if p.pid not in pids)]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.measured_pids())

    def worker_cpu(self) -> float:
        """The workers' CPU alone (without Redis: the shared one also serves
        whatever else runs on the machine)."""
        return sum(cpu_seconds(pid) for pid in self.worker_pids())

    def rss(self) -> int:
        return sum(rss_bytes(pid) for pid in self.measured_pids())

    def read_log(self) -> str:
        self.log.flush()
        try:
            with open(os.path.join(self.tmp, "server.log"), errors="replace") as f:
                text = f.read()[-3000:]
            err = os.path.join(self.tmp, "error.log")
            if os.path.exists(err):
                with open(err, errors="replace") as f:
                    text += f.read()[-2000:]
            return text
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.profiler is not None:
            self.profiler.send_signal(signal.SIGINT)
            try:
                self.profiler.wait(15)
            except subprocess.TimeoutExpired:
                self.profiler.kill()
        for proc in [self.proc, *self.extra]:
            if proc.poll() is None:
                proc.send_signal(
                    signal.SIGTERM if proc is not self.proc or self.impl.name != "nchan" else signal.SIGQUIT
                )
        for proc in [self.proc, *self.extra]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.log.close()
        if self.redis_prefix is not None:
            self._drop_redis_keys()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _pin_server() -> None:
    os.sched_setaffinity(0, {SERVER_CPU})


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not _port_open(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"port {port} never opened")
        time.sleep(0.05)
