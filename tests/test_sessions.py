"""Remembered sessions, :mod:`flask_sse_broker._sessions`, on their own."""

from __future__ import annotations

from flask_sse_broker._sessions import Sessions


def test_the_oldest_session_goes_first_past_the_count() -> None:
    sessions = Sessions()
    for name in "abc":
        sessions.remember(name, frozenset({name}), 1.0, max_count=2, max_bytes=None)
    assert [cid for cid, _ in sessions.items()] == ["b", "c"]
    assert sessions.evicted == 1


def test_remembering_again_makes_a_session_the_newest() -> None:
    sessions = Sessions()
    sessions.remember("a", frozenset({"x"}), 1.0, max_count=2, max_bytes=None)
    sessions.remember("b", frozenset({"x"}), 1.0, max_count=2, max_bytes=None)
    sessions.remember("a", frozenset({"y"}), 1.0, max_count=2, max_bytes=None)
    sessions.remember("c", frozenset({"x"}), 1.0, max_count=2, max_bytes=None)
    assert [cid for cid, _ in sessions.items()] == ["a", "c"]


def test_bytes_count_the_utf8_of_ids_and_topics() -> None:
    sessions = Sessions()
    sessions.remember("id", frozenset({"\u00e9t\u00e9", "a"}), 1.0, max_count=None, max_bytes=None)
    assert sessions.bytes == 2 + 5 + 1
    sessions.forget("id")
    assert (len(sessions), sessions.bytes) == (0, 0)


def test_expired_sessions_are_forgotten_without_counting_as_evicted() -> None:
    sessions = Sessions()
    sessions.remember("old", frozenset({"t"}), 1.0, max_count=None, max_bytes=None)
    sessions.remember("new", frozenset({"t"}), 5.0, max_count=None, max_bytes=None)
    sessions.expire(now=2.0)
    assert [cid for cid, _ in sessions.items()] == ["new"]
    assert sessions.evicted == 0
