"""The heartbeat pass's dead-peer poll (``_socket.closed_peers``) on real TCP
sockets: it flags exactly the sockets whose client closed its end."""

from __future__ import annotations

import socket
import time
import typing as t

import pytest

from flask_sse_broker._socket import closed_peers

pytestmark = pytest.mark.skipif(not hasattr(__import__("select"), "poll"), reason="needs poll")


def _pairs(n: int) -> tuple[list[socket.socket], list[socket.socket]]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(n)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(n)]
        servers = [listener.accept()[0] for _ in range(n)]
    for s in servers:
        s.setblocking(False)
    return clients, servers


def _until(check: t.Callable[[], t.Any], timeout: float = 5.0) -> t.Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def test_only_the_sockets_whose_client_closed_are_flagged() -> None:
    clients, servers = _pairs(4)
    try:
        assert closed_peers(servers) == []
        clients[1].close()
        clients[3].send(b"GET / HTTP/1.1\r\n\r\n")  # readable, but the client is still there
        clients[2].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        clients[2].close()  # a reset
        assert _until(lambda: closed_peers(servers) == [1, 2]) is True
    finally:
        for s in [*clients, *servers]:
            s.close()


def test_sockets_closed_on_the_server_side_or_missing_are_skipped() -> None:
    clients, servers = _pairs(2)
    try:
        servers[0].close()  # fileno() is -1 now
        assert closed_peers([servers[0], None, servers[1]]) == []
        clients[1].close()
        assert _until(lambda: closed_peers([servers[0], None, servers[1]]) == [2]) is True
    finally:
        for s in [*clients, *servers]:
            s.close()
