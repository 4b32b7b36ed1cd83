"""The redirect graph's strongly connected components: one home for the algorithm that both
the compiler's loop check (`compiler.load.crosscheck`) and the agent's recipient index
(`runtime.policy.recipients`) run, so the two can never disagree on what a loop is.

In `schemas/` because that is the one package both sides import.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence


def strongly_connected_components(graph: Mapping[str, Sequence[str]]) -> Iterator[list[str]]:
    """The strongly connected components of `graph` (node → its targets), each after every
    component it leads to, roots taken in the mapping's order (Tarjan's algorithm, iterative:
    a chain of redirects is as deep as it is long, far past the recursion limit). Targets that
    are not keys of `graph` are leaves, outside every component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root in graph:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work: list[tuple[str, Iterator[str]]] = [(root, iter(graph[root]))]
        while work:
            node, targets = work[-1]
            for t in targets:
                if t not in graph:
                    continue
                if t not in index:
                    index[t] = low[t] = len(index)
                    stack.append(t)
                    on_stack.add(t)
                    work.append((t, iter(graph[t])))
                    break
                if t in on_stack:
                    low[node] = min(low[node], index[t])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    yield component


def is_loop(component: Sequence[str], graph: Mapping[str, Sequence[str]]) -> bool:
    """Whether a component of `graph` is a loop: several nodes, or one that targets itself."""
    return len(component) > 1 or component[0] in graph.get(component[0], ())
