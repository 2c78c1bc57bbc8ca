"""Topics, topic patterns, and the index that finds an event's recipients.

A topic is any printable string (``orders``, ``orders/42``); ``/`` splits it
into segments. A *pattern* is a topic with wildcard segments:

- ``*`` matches exactly one segment: ``orders/*`` matches ``orders/42``, not
  ``orders`` nor ``orders/42/items``;
- ``**``, only as the last segment, matches one or more segments:
  ``orders/**`` matches ``orders/42`` and ``orders/42/items``, not ``orders``.

A wildcard stands for a *non-empty* segment, and a pattern has no empty
segment: ``orders/*`` does not match ``orders/`` (an empty last segment), and
``a//*`` is refused. A plain topic may still hold empty segments (``a//b`` was
a valid topic before patterns existed and stays one); no wildcard matches it
at that position. ``*`` anywhere else (``ord*``, ``a/*b``, ``a/**/b``) makes an
invalid topic.

:class:`TopicIndex` maps each subscription, plain or pattern, to the members
holding it (the broker's connections) and answers "who receives an event on
this topic" with a dictionary lookup for plain topics plus a walk of a segment
trie for patterns. The walk follows, per segment of the topic, the literal and
the ``*`` branch of each node it reached, so its cost grows with the topic's
segments and with the patterns that share a prefix with it, never with the
number of patterns held.
"""

from __future__ import annotations

import typing as t

from .exceptions import InvalidTopic

#: The separator of segments.
SEP = "/"
#: The one-segment wildcard.
STAR = "*"
#: The one-or-more trailing segments wildcard.
REST = "**"

M = t.TypeVar("M")


def is_pattern(topic: str) -> bool:
    """Whether a *valid* topic is a pattern (holds a wildcard segment)."""
    return STAR in topic


def check_topic(topic: object, max_length: int) -> str:
    """Return ``topic`` if it is a valid topic or pattern.

    :raises InvalidTopic: not a string, empty, longer than ``max_length``,
        holding a control character, or a misplaced wildcard.
    """
    if not isinstance(topic, str):
        raise InvalidTopic(repr(topic), "a topic must be a string")
    if not topic:
        raise InvalidTopic(topic, "a topic must not be empty")
    if len(topic) > max_length:
        raise InvalidTopic(topic, f"longer than {max_length} characters")
    if not topic.isprintable():
        raise InvalidTopic(topic, "control characters are not allowed")
    if STAR in topic:
        segments = topic.split(SEP)
        last = len(segments) - 1
        for i, segment in enumerate(segments):
            if not segment:
                raise InvalidTopic(topic, "a pattern must not have an empty segment")
            if STAR not in segment or segment == STAR:
                continue
            if segment == REST:
                if i != last:
                    raise InvalidTopic(topic, "'**' may only be the last segment")
                continue
            raise InvalidTopic(topic, "'*' must be a whole segment ('*' or a last '**')")
    return topic


def check_publish_topic(topic: object, max_length: int) -> str:
    """Return ``topic`` if an event may be published to it: a valid topic
    that is not a pattern.

    :raises InvalidTopic: invalid, or a pattern.
    """
    checked = check_topic(topic, max_length)
    if is_pattern(checked):
        raise InvalidTopic(checked, "events are published to topics, not to patterns")
    return checked


class _Node(t.Generic[M]):
    """One segment position of the pattern trie."""

    __slots__ = ("children", "exact", "rest", "star")

    def __init__(self) -> None:
        #: Literal segment -> the node after it.
        self.children: dict[str, _Node[M]] = {}
        #: The node after a ``*`` segment.
        self.star: _Node[M] | None = None
        #: Members of the pattern that ends at this node.
        self.exact: set[M] | None = None
        #: Members of the pattern ``<path to this node>/**``.
        self.rest: set[M] | None = None

    def empty(self) -> bool:
        return not self.children and self.star is None and self.exact is None and self.rest is None


class TopicIndex(t.Generic[M]):
    """Subscriptions (plain topics and patterns, as written) and who holds them.

    Not thread-safe: the broker calls it under its lock. :meth:`match` may
    return a set the index keeps, so its caller must neither change it nor
    keep it past the next change of the index.
    """

    __slots__ = ("_patterns", "_root", "_subscriptions")

    def __init__(self) -> None:
        #: Every subscription as written -> its members (for patterns, the
        #: same set object the trie holds).
        self._subscriptions: dict[str, set[M]] = {}
        #: The number of patterns held; the trie is skipped while it is 0.
        self._patterns = 0
        self._root: _Node[M] = _Node()

    def __len__(self) -> int:
        return len(self._subscriptions)

    def __contains__(self, subscription: object) -> bool:
        return subscription in self._subscriptions

    def __iter__(self) -> t.Iterator[str]:
        return iter(self._subscriptions)

    def items(self) -> t.ItemsView[str, set[M]]:
        """Each subscription with its members (read-only, like :meth:`match`)."""
        return self._subscriptions.items()

    def holders(self, subscription: str) -> t.Collection[M]:
        """The members holding ``subscription`` exactly as written."""
        return self._subscriptions.get(subscription, ())

    def add(self, subscription: str, members: t.Iterable[M]) -> None:
        """Make ``members`` hold ``subscription`` (a valid topic or pattern)."""
        current = self._subscriptions.get(subscription)
        if current is None:
            current = set(members)
            if not current:
                return
            self._subscriptions[subscription] = current
            if is_pattern(subscription):
                self._attach(subscription, current)
                self._patterns += 1
        else:
            current.update(members)

    def discard(self, subscription: str, members: t.Iterable[M]) -> None:
        """Make ``members`` no longer hold ``subscription``; forget a
        subscription left with no member."""
        current = self._subscriptions.get(subscription)
        if current is None:
            return
        current.difference_update(members)
        if current:
            return
        del self._subscriptions[subscription]
        if is_pattern(subscription):
            self._detach(subscription)
            self._patterns -= 1

    def add_all(self, subscriptions: t.Iterable[str], members: t.Collection[M]) -> None:
        """:meth:`add` for each of ``subscriptions``."""
        for subscription in subscriptions:
            self.add(subscription, members)

    def discard_all(self, subscriptions: t.Iterable[str], members: t.Collection[M]) -> None:
        """:meth:`discard` for each of ``subscriptions``."""
        for subscription in subscriptions:
            self.discard(subscription, members)

    def _attach(self, pattern: str, members: set[M]) -> None:
        node = self._root
        segments = pattern.split(SEP)
        for segment in segments[:-1]:
            node = self._step(node, segment)
        last = segments[-1]
        if last == REST:
            node.rest = members
        else:
            self._step(node, last).exact = members

    @staticmethod
    def _step(node: _Node[M], segment: str) -> _Node[M]:
        if segment == STAR:
            if node.star is None:
                node.star = _Node()
            return node.star
        child = node.children.get(segment)
        if child is None:
            child = node.children[segment] = _Node()
        return child

    def _detach(self, pattern: str) -> None:
        segments = pattern.split(SEP)
        last = segments[-1]
        path = [self._root]
        for segment in segments if last != REST else segments[:-1]:
            parent = path[-1]
            child = parent.star if segment == STAR else parent.children.get(segment)
            assert child is not None, pattern
            path.append(child)
        if last == REST:
            path[-1].rest = None
        else:
            path[-1].exact = None
        # Prune the nodes the pattern leaves empty, deepest first, so a churn
        # of distinct patterns does not grow the trie.
        steps = segments if last != REST else segments[:-1]
        for depth in range(len(steps), 0, -1):
            node = path[depth]
            if not node.empty():
                break
            parent = path[depth - 1]
            if steps[depth - 1] == STAR:
                parent.star = None
            else:
                del parent.children[steps[depth - 1]]

    def match(self, topic: str) -> t.Collection[M]:
        """The members that receive an event published to ``topic`` (a plain
        topic), each once however many of its subscriptions match."""
        plain = self._subscriptions.get(topic)
        if not self._patterns:
            return plain if plain is not None else ()
        found = self._walk(topic)
        if not found:
            return plain if plain is not None else ()
        if plain is None and len(found) == 1:
            return found[0]
        if plain is not None:
            found.append(plain)
        return set().union(*found)

    def _walk(self, topic: str) -> list[set[M]]:
        """The member sets of the patterns matching ``topic``."""
        segments = topic.split(SEP)
        count = len(segments)
        # ``**`` matches from position i only if no segment from i on is
        # empty: find the last empty one (rare: only plain topics have them).
        last_empty = -1
        if "" in segments:
            last_empty = count - 1 - segments[::-1].index("")
        found: list[set[M]] = []
        nodes = [self._root]
        for i, segment in enumerate(segments):
            following: list[_Node[M]] = []
            for node in nodes:
                if node.rest is not None and i > last_empty:
                    found.append(node.rest)
                if not segment:
                    continue  # no wildcard matches an empty segment, no literal is empty
                child = node.children.get(segment)
                if child is not None:
                    following.append(child)
                if node.star is not None:
                    following.append(node.star)
            if not following:
                return found
            nodes = following
        found.extend(node.exact for node in nodes if node.exact is not None)
        return found


class Subscriptions:
    """One client's subscriptions, asked whether an event's topic reaches it.

    ``topic in Subscriptions(client_topics)`` is true when a plain topic of
    the client equals ``topic`` or one of its patterns matches it: the test
    replay uses to pick a client's events from the history.
    """

    __slots__ = ("_index", "_plain")

    def __init__(self, subscriptions: t.Iterable[str]) -> None:
        self._plain: set[str] = set()
        self._index: TopicIndex[bool] | None = None
        for subscription in subscriptions:
            if is_pattern(subscription):
                if self._index is None:
                    self._index = TopicIndex()
                self._index.add(subscription, (True,))
            else:
                self._plain.add(subscription)

    def __contains__(self, topic: object) -> bool:
        if topic in self._plain:
            return True
        return isinstance(topic, str) and self._index is not None and bool(self._index.match(topic))


def matches(subscription: str, topic: str) -> bool:
    """Whether an event on ``topic`` reaches a holder of ``subscription``."""
    return topic in Subscriptions((subscription,))
