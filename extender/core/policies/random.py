"""random (seeded): a pseudo-random but reproducible node and GPU.

No RNG state is consumed: the value for (seed, pod, node, GPU) is a hash (SplitMix64 finaliser), so Filter,
Prioritize and Bind of the same pod agree, and the same seed gives the same decisions in any process.

    node score = 10 * h(seed, pod, node) / 2^64        GPU preference = h(seed, pod, node, GPU) / 2^64
"""

from __future__ import annotations

import numpy as np

from .base import MAX_SCORE, Need, Policy, Take, View

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def unit_interval(x: np.ndarray) -> np.ndarray:
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class Random(Policy):
    name = "random"
    node_local = False  # the draw depends on the pod's identity
    integer_scores = False  # the paper gives one uniformly drawn node the top score: a continuous draw, no ties

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def _node_hash(self, view: View, need: Need) -> np.ndarray:
        salt = np.uint64((self.seed * 0x9E3779B1 + need.pod_hash) & 0xFFFFFFFFFFFFFFFF)
        with np.errstate(over="ignore"):
            return mix64(view.ledger.node_hash.take(view.rows) ^ salt)

    def gpu_preference(self, view: View, need: Need, memory: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            base = self._node_hash(view, need)[:, None]
            return unit_interval(mix64(base + view.positions.astype(np.uint64) * _GOLDEN))

    def node_score(self, view: View, need: Need, take: Take) -> np.ndarray:
        return MAX_SCORE * unit_interval(self._node_hash(view, need))

    def describe(self) -> str:
        return f"random(seed={self.seed})"
