"""The simulator's radix prefix cache over token ids: longest-prefix match, insert, LRU leaf eviction.

Like SGLang's RadixCache: edges hold token runs, matches are whole pages (``page_size``), and when
the pool is short of room the least recently used leaves are evicted first. Disabled, it matches
nothing and stores nothing.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Node:
    key: tuple[int, ...] = ()
    parent: _Node | None = None
    children: dict[int, _Node] = field(default_factory=dict)
    last_access: int = 0


def _common_length(a: tuple[int, ...], b: list[int] | tuple[int, ...], start: int) -> int:
    length = 0
    limit = min(len(a), len(b) - start)
    while length < limit and a[length] == b[start + length]:
        length += 1
    return length


class RadixCache:
    def __init__(self, page_size: int = 1, enabled: bool = True) -> None:
        self.page_size = max(1, page_size)
        self.enabled = enabled
        self.reset()

    def reset(self) -> None:
        self._root = _Node()
        self.size = 0  # cached tokens
        self._clock = itertools.count()

    def _touch(self, node: _Node) -> None:
        node.last_access = next(self._clock)

    def match_prefix(self, ids: list[int]) -> int:
        """Length of the longest cached prefix of ``ids`` in whole pages (marks it recently used)."""
        if not self.enabled:
            return 0
        node, matched = self._root, 0
        while matched < len(ids):
            child = node.children.get(ids[matched])
            if child is None:
                break
            length = _common_length(child.key, ids, matched)
            self._touch(child)
            matched += length
            if length < len(child.key):
                break
            node = child
        return matched - matched % self.page_size

    def insert(self, ids: list[int]) -> None:
        """Cache ``ids`` (whole pages only)."""
        if not self.enabled:
            return
        ids = ids[: len(ids) - len(ids) % self.page_size]
        node, position = self._root, 0
        while position < len(ids):
            child = node.children.get(ids[position])
            if child is None:
                leaf = _Node(tuple(ids[position:]), node)
                self._touch(leaf)
                node.children[ids[position]] = leaf
                self.size += len(leaf.key)
                return
            length = _common_length(child.key, ids, position)
            if length < len(child.key):
                child = self._split(child, length)
            self._touch(child)
            position += length
            node = child

    def _split(self, child: _Node, length: int) -> _Node:
        """Cut ``child``'s edge after ``length`` tokens; returns the new upper node."""
        parent = child.parent
        assert parent is not None
        upper = _Node(child.key[:length], parent, last_access=child.last_access)
        parent.children[child.key[0]] = upper
        child.key = child.key[length:]
        child.parent = upper
        upper.children[child.key[0]] = child
        return upper

    def evict(self, tokens: int) -> int:
        """Drop least recently used leaves until ``tokens`` are freed (or the cache is empty)."""
        leaves = [(n.last_access, id(n), n) for n in self._nodes() if not n.children and n is not self._root]
        heapq.heapify(leaves)
        freed = 0
        while freed < tokens and leaves:
            _, _, leaf = heapq.heappop(leaves)
            parent = leaf.parent
            assert parent is not None
            del parent.children[leaf.key[0]]
            freed += len(leaf.key)
            if parent is not self._root and not parent.children:
                heapq.heappush(leaves, (parent.last_access, id(parent), parent))
        self.size -= freed
        return freed

    def _nodes(self) -> list[_Node]:
        out, stack = [], [self._root]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out
