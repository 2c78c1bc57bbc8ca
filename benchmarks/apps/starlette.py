"""The async alternative: sse-starlette on uvicorn, one ``asyncio.Queue`` per client."""

from __future__ import annotations

import asyncio
import os

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

HEARTBEAT = float(os.environ.get("BENCH_HEARTBEAT", "5"))
subscribers: dict[str, set[asyncio.Queue[str]]] = {}


async def stream(request: Request) -> EventSourceResponse:
    topic = request.query_params["topic"]
    q: asyncio.Queue[str] = asyncio.Queue()
    subscribers.setdefault(topic, set()).add(q)

    async def events():
        try:
            while True:
                yield {"data": await q.get()}
        finally:
            subscribers[topic].discard(q)

    return EventSourceResponse(events(), ping=int(HEARTBEAT))


async def publish(request: Request) -> JSONResponse:
    data = (await request.body()).decode()
    targets = list(subscribers.get(request.query_params["topic"], ()))
    for q in targets:
        q.put_nowait(data)
    return JSONResponse({"queued": len(targets)})


app = Starlette(routes=[Route("/stream", stream), Route("/publish", publish, methods=["POST"])])
