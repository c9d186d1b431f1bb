"""Which set of GPUs on a node is best connected, for requests that span several GPUs.

The node's link matrix becomes a weighted networkx graph (edge weight = link rank, see
:func:`extender.core.inventory.link_weight`). A set's connectivity is the weight of its weakest link first
(one PCIe hop across sockets slows an all-reduce more than many NVLinks speed it up), then the sum of all its
links. Sets are compared exhaustively while that is cheap and grown greedily beyond.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations
from math import comb

import networkx as nx

from .inventory import link_weight

EXHAUSTIVE_LIMIT = 5000


@lru_cache(maxsize=256)
def link_graph(links: tuple[tuple[str, ...], ...]) -> nx.Graph:
    """GPU positions as vertices, one weighted edge per pair. Cached: inventories repeat across nodes."""
    graph = nx.Graph()
    graph.add_nodes_from(range(len(links)))
    for i, j in combinations(range(len(links)), 2):
        graph.add_edge(i, j, weight=link_weight(links[i][j]), code=links[i][j])
    return graph


def connectivity(graph: nx.Graph, members: tuple[int, ...]) -> tuple[int, int]:
    """(weakest link, total link weight) of a GPU set; a single GPU is perfectly connected."""
    if len(members) < 2:
        return (1 << 30, 0)
    sub = graph.subgraph(members)
    weights = [w for _, _, w in sub.edges(data="weight")]
    return (min(weights), sum(weights))


def best_connected(
    graph: nx.Graph, candidates: list[int], count: int, preference: dict[int, float]
) -> tuple[int, ...]:
    """Choose ``count`` of ``candidates``: best connectivity, then highest summed policy preference, then the
    lowest positions (the explicit tie-break that keeps choice deterministic)."""
    candidates = sorted(candidates)
    if len(candidates) <= count:
        return tuple(candidates[:count])

    def key(members: tuple[int, ...]) -> tuple:
        weakest, total = connectivity(graph, members)
        return (-weakest, -total, -sum(preference[m] for m in members), members)

    if comb(len(candidates), count) <= EXHAUSTIVE_LIMIT:
        return min(combinations(candidates, count), key=key)
    # Greedy: seed with the best pair, then add the GPU that keeps the set best connected.
    chosen = min(combinations(candidates, 2), key=key)
    while len(chosen) < count:
        chosen = min((tuple(sorted((*chosen, c))) for c in candidates if c not in chosen), key=key)
    return chosen
