"""The topic index and pattern rules, against a naive reference matcher."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from flask_sse_broker._topics import (
    Subscriptions,
    TopicIndex,
    check_publish_topic,
    check_topic,
    is_pattern,
    matches,
)
from flask_sse_broker.exceptions import InvalidTopic

MAX = 200


def reference_matches(subscription: str, topic: str) -> bool:
    """The rules of SPEC §9.1 read literally, one subscription at a time."""
    if "*" not in subscription:
        return subscription == topic
    pattern = subscription.split("/")
    segments = topic.split("/")
    if pattern[-1] == "**":
        pattern = pattern[:-1]
        rest = segments[len(pattern) :]
        if not rest or "" in rest:
            return False
        segments = segments[: len(pattern)]
    if len(pattern) != len(segments):
        return False
    return all(p == s or (p == "*" and s != "") for p, s in zip(pattern, segments, strict=True))


def reference_valid(topic: str) -> bool:
    if not topic or len(topic) > MAX or not topic.isprintable():
        return False
    if "*" not in topic:
        return True
    segments = topic.split("/")
    if "" in segments:
        return False
    body, last = segments[:-1], segments[-1]
    return all(s == "*" or "*" not in s for s in body) and (last in ("*", "**") or "*" not in last)


# Small alphabets so that matches are frequent.
literal = st.sampled_from(["a", "b", "c"])
topic_segment = st.sampled_from(["a", "b", "c", ""])
topics = st.lists(topic_segment, min_size=1, max_size=5).map("/".join).filter(bool)
pattern_body = st.lists(st.one_of(literal, st.just("*")), min_size=0, max_size=4)
subscriptions = st.one_of(
    st.lists(literal, min_size=1, max_size=5).map("/".join),
    pattern_body.filter(bool).map("/".join),
    pattern_body.map(lambda segments: "/".join([*segments, "**"])),
)


# -- validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "orders",
        "orders/42",
        "orders/*",
        "orders/**",
        "*",
        "**",
        "*/42",
        "a/*/b/**",
        "a//b",
        "/a",
        "a/",
        "a.b:c",
    ],
)
def test_valid_topics_are_accepted_as_written(topic: str) -> None:
    assert check_topic(topic, MAX) == topic


@pytest.mark.parametrize(
    "topic",
    ["ord*", "a/*b", "a/b*", "***", "a/**/b", "**/a", "a//*", "/*", "*/", "a/*/", "a\n*", ""],
)
def test_misplaced_wildcards_and_empty_pattern_segments_are_invalid(topic: str) -> None:
    with pytest.raises(InvalidTopic):
        check_topic(topic, MAX)


def test_a_pattern_longer_than_the_limit_is_invalid() -> None:
    with pytest.raises(InvalidTopic, match="longer than 9"):
        check_topic("orders/*/x", 9)
    assert check_topic("orders/*/x", 10) == "orders/*/x"


def test_a_non_string_topic_is_invalid() -> None:
    with pytest.raises(InvalidTopic):
        check_topic(42, MAX)


def test_publishing_to_a_pattern_is_refused() -> None:
    assert check_publish_topic("orders/42", MAX) == "orders/42"
    with pytest.raises(InvalidTopic, match="patterns"):
        check_publish_topic("orders/*", MAX)
    with pytest.raises(ValueError):
        check_publish_topic("orders/**", MAX)


@given(st.text(alphabet="ab*/\n", max_size=12))
def test_validation_agrees_with_the_reference(topic: str) -> None:
    try:
        check_topic(topic, MAX)
    except InvalidTopic:
        assert not reference_valid(topic)
    else:
        assert reference_valid(topic)


@given(subscriptions)
def test_generated_subscriptions_are_valid(subscription: str) -> None:
    assert check_topic(subscription, MAX) == subscription
    assert is_pattern(subscription) == ("*" in subscription)


# -- matching --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("orders/*", "orders/42", True),
        ("orders/*", "orders", False),
        ("orders/*", "orders/42/items", False),
        ("orders/*", "orders/", False),
        ("orders/**", "orders/42", True),
        ("orders/**", "orders/42/items", True),
        ("orders/**", "orders", False),
        ("orders/**", "orders/42//x", False),
        ("*/42", "orders/42", True),
        ("*", "orders", True),
        ("*", "orders/42", False),
        ("**", "orders/42/items", True),
        ("a/*/c/**", "a/b/c/d/e", True),
        ("a/*/c/**", "a/b/c", False),
        ("orders", "orders", True),
        ("orders", "orders/42", False),
    ],
)
def test_pattern_semantics(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected
    assert reference_matches(pattern, topic) is expected


@given(subscriptions, topics)
def test_one_subscription_matches_as_the_reference(subscription: str, topic: str) -> None:
    assert matches(subscription, topic) == reference_matches(subscription, topic)


@given(st.lists(subscriptions, max_size=8), topics)
def test_subscriptions_contain_a_topic_when_one_of_them_matches(held: list[str], topic: str) -> None:
    expected = any(reference_matches(s, topic) for s in held)
    assert (topic in Subscriptions(held)) == expected


@given(st.lists(st.tuples(subscriptions, st.integers(0, 6)), max_size=30), topics)
def test_index_match_is_the_naive_scan(held: list[tuple[str, int]], topic: str) -> None:
    index: TopicIndex[int] = TopicIndex()
    for subscription, member in held:
        index.add(subscription, (member,))
    expected = {member for subscription, member in held if reference_matches(subscription, topic)}
    result = index.match(topic)
    assert sorted(result) == sorted(expected)  # each member once


def test_a_member_matching_through_several_subscriptions_is_counted_once() -> None:
    index: TopicIndex[str] = TopicIndex()
    for subscription in ("orders/42", "orders/*", "orders/**", "*/42", "**"):
        index.add(subscription, ("conn",))
    index.add("orders/*", ("other",))
    assert sorted(index.match("orders/42")) == ["conn", "other"]


def test_match_returns_nothing_for_an_unknown_topic() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("orders/*", ("conn",))
    assert not index.match("users/1")
    assert not index.match("orders")


def test_holders_are_the_members_of_a_subscription_as_written() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("orders/*", ("a",))
    index.add("orders/42", ("b",))
    assert set(index.holders("orders/*")) == {"a"}
    assert set(index.holders("orders/42")) == {"b"}
    assert not index.holders("orders/**")


def test_removing_every_member_forgets_the_subscription_and_prunes_the_trie() -> None:
    index: TopicIndex[str] = TopicIndex()
    patterns = [f"p{i}/*/x/**" for i in range(50)] + ["*/*", "**", "a/*"]
    for pattern in patterns:
        index.add(pattern, ("m",))
    for pattern in patterns:
        index.discard(pattern, ("m",))
    assert len(index) == 0
    assert index._root.empty()
    assert index._patterns == 0


def test_adding_no_member_creates_no_subscription() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("orders/*", ())
    assert "orders/*" not in index
    assert not index.match("orders/1")


class IndexMachine(RuleBasedStateMachine):
    """Any sequence of adds and discards leaves an index that agrees with a
    naive scan of what is held."""

    def __init__(self) -> None:
        super().__init__()
        self.index: TopicIndex[int] = TopicIndex()
        self.held: dict[str, set[int]] = {}

    @rule(subscription=subscriptions, members=st.sets(st.integers(0, 4), max_size=3))
    def add(self, subscription: str, members: set[int]) -> None:
        self.index.add(subscription, members)
        if members:
            self.held.setdefault(subscription, set()).update(members)

    @rule(subscription=subscriptions, members=st.sets(st.integers(0, 4), max_size=3))
    def discard(self, subscription: str, members: set[int]) -> None:
        self.index.discard(subscription, members)
        if subscription in self.held:
            self.held[subscription] -= members
            if not self.held[subscription]:
                del self.held[subscription]

    @rule(topic=topics)
    def match(self, topic: str) -> None:
        expected = set()
        for subscription, members in self.held.items():
            if reference_matches(subscription, topic):
                expected |= members
        result = list(self.index.match(topic))
        assert sorted(result) == sorted(expected)

    @invariant()
    def same_subscriptions(self) -> None:
        assert set(self.index) == set(self.held)
        assert len(self.index) == len(self.held)
        for subscription, members in self.held.items():
            assert set(self.index.holders(subscription)) == members

    @invariant()
    def empty_trie_when_no_pattern(self) -> None:
        if not any("*" in s for s in self.held):
            assert self.index._root.empty()


TestIndexMachine = IndexMachine.TestCase
TestIndexMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
