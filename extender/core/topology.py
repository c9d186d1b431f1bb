"""Which set of GPUs on a node is best connected, for requests that span several GPUs.

A node's link matrix (``nvidia-smi topo -m`` codes) gives each pair of GPUs a weight, its link rank
(:func:`extender.core.inventory.link_weight`). A set's connectivity is the weight of its weakest link first
(one PCIe hop across sockets slows an all-reduce more than many NVLinks speed it up), then the sum of all its
links. Sets are compared exhaustively while that is cheap and grown greedily beyond.

:func:`link_graph` gives the same links as a networkx graph, for the node agent's topology report.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations
from math import comb

import networkx as nx

from .inventory import link_weight

EXHAUSTIVE_LIMIT = 5000
Weights = tuple[tuple[int, ...], ...]


@lru_cache(maxsize=256)
def link_weights(links: tuple[tuple[str, ...], ...]) -> Weights:
    """Weight of the link between every two GPU positions (0 on the diagonal). Cached: inventories repeat."""
    return tuple(tuple(0 if i == j else link_weight(code) for j, code in enumerate(row)) for i, row in enumerate(links))


@lru_cache(maxsize=256)
def link_graph(links: tuple[tuple[str, ...], ...]) -> nx.Graph:
    """GPU positions as vertices, one weighted edge per pair (weight = link rank, code = the link code)."""
    graph = nx.Graph()
    graph.add_nodes_from(range(len(links)))
    for i, j in combinations(range(len(links)), 2):
        graph.add_edge(i, j, weight=link_weight(links[i][j]), code=links[i][j])
    return graph


def connectivity(weights: Weights, members: tuple[int, ...]) -> tuple[int, int]:
    """(weakest link, total link weight) of a GPU set; a single GPU is perfectly connected."""
    if len(members) < 2:
        return (1 << 30, 0)
    pairs = [weights[a][b] for a, b in combinations(members, 2)]
    return (min(pairs), sum(pairs))


def best_connected(weights: Weights, candidates: list[int], count: int,
                   preference: dict[int, float]) -> tuple[int, ...]:
    """Choose ``count`` of ``candidates``: best connectivity, then highest summed policy preference, then the
    lowest positions (the explicit tie-break that keeps choice deterministic)."""
    candidates = sorted(candidates)
    if len(candidates) <= count:
        return tuple(candidates[:count])

    def key(members: tuple[int, ...]) -> tuple:
        weakest, total = connectivity(weights, members)
        return (-weakest, -total, -sum(preference[m] for m in members), members)

    if comb(len(candidates), count) <= EXHAUSTIVE_LIMIT:
        return min(combinations(candidates, count), key=key)
    # Greedy: seed with the best pair, then add the GPU that keeps the set best connected.
    chosen = min(combinations(candidates, 2), key=key)
    while len(chosen) < count:
        chosen = min((tuple(sorted((*chosen, c))) for c in candidates if c not in chosen), key=key)
    return chosen
