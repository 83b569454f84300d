"""Graph algorithms over node ids, shared by validation and compilation.

Iterative throughout: definitions may hold hundreds of nodes in a chain, deeper
than Python's recursion limit allows for a recursive walk. An adjacency maps a
node to its (target, edge index) pairs; edge indexes let problems point at edges.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping, Sequence

Adjacency = Mapping[str, Sequence[tuple[str, int]]]


def reachable(start: str, adjacency: Adjacency) -> set[str]:
    """Nodes reachable from `start` (inclusive) along `adjacency`."""
    seen, stack = {start}, [start]
    while stack:
        for target, _ in adjacency.get(stack.pop(), ()):
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def reverse(adjacency: Adjacency) -> dict[str, list[tuple[str, int]]]:
    """The same edges pointing the other way."""
    backward: dict[str, list[tuple[str, int]]] = {node: [] for node in adjacency}
    for source, targets in adjacency.items():
        for target, index in targets:
            backward.setdefault(target, []).append((source, index))
    return backward


def strongly_connected(nodes: Sequence[str], adjacency: Adjacency) -> list[list[str]]:
    """Tarjan's strongly connected components, deterministic for a given `nodes` order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            targets = adjacency.get(node, ())
            if child < len(targets):
                work.append((node, child + 1))
                target = targets[child][0]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                components.append(_pop_component(node, stack, on_stack))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return components


def _pop_component(root: str, stack: list[str], on_stack: set[str]) -> list[str]:
    component: list[str] = []
    while not component or component[-1] != root:
        component.append(stack.pop())
        on_stack.discard(component[-1])
    return component


def shortest_cycle(start: str, adjacency: Adjacency) -> tuple[list[str], int] | None:
    """A shortest cycle through `start`: its nodes (`start` at both ends) and the
    index of the edge that closes it; None when `start` is on no cycle."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target, edge in adjacency.get(node, ()):
            if target == start:
                return [*_path_from(start, node, parent), start], edge
            if target not in parent:
                parent[target] = node
                queue.append(target)
    return None


def _path_from(start: str, node: str, parent: Mapping[str, str]) -> list[str]:
    path = [node]
    while path[-1] != start:
        path.append(parent[path[-1]])
    return path[::-1]


def stable_topological_order(nodes: Sequence[str], adjacency: Adjacency) -> list[str]:
    """Kahn's algorithm, always taking the earliest-declared ready node.

    So the order only changes where the edges force it. Nodes on a cycle are left
    out (validation refuses cycles before this is used).
    """
    position = {node: i for i, node in enumerate(nodes)}
    indegree = dict.fromkeys(nodes, 0)
    for node in nodes:
        for target, _ in adjacency.get(node, ()):
            indegree[target] += 1
    ready = [position[node] for node in nodes if indegree[node] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node = nodes[heapq.heappop(ready)]
        order.append(node)
        for target, _ in adjacency.get(node, ()):
            indegree[target] -= 1
            if indegree[target] == 0:
                heapq.heappush(ready, position[target])
    return order
