"""GPU-clustering (the FGD paper's GpuClustering): keep pods of the same kind together.

A node's "affinity" is the set of kinds of the pods on it. ``affinity`` says what a kind is:

* ``"share"`` (default, the extender's): the per-GPU unit share (50 units and 25 units are two kinds);
* ``"kind"``: the paper's simulator: every pod that shares a GPU is one kind, and a pod of n whole GPUs is
  kind "n-gpu".

Four bands, each 2.5 wide, and within a band the fuller node wins (scaled by the largest node in the cluster):

    base = 2.5 * (max node units - free units on node) / max node units
    pod's kind present and the only one: base + 7.5     present among others: base + 5
    node empty:                          base + 2.5     only other kinds:     base
    e.g. max 800 units, node with 500 free holding only 50-unit pods, ask 50: 2.5 * 300/800 + 7.5 = 8.4375

GPU preference: ``"share"``: GPUs holding only the same share first, then the fewest free units; ``"kind"``:
the fewest free units (the paper's "best" GPU selection). A pod without GPUs scores 0 everywhere under
``"kind"``, as in the paper.
"""

from __future__ import annotations

import numpy as np

from ..ledger import KIND_SLOTS
from .base import Need, Policy, Take, View, ratio

AFFINITIES = ("share", "kind")


class GpuClustering(Policy):
    name = "gpu-clustering"
    reads = ("free_units_sum",)

    def __init__(self, affinity: str = "share") -> None:
        if affinity not in AFFINITIES:
            raise ValueError(f"{self.name}: affinity must be one of {', '.join(AFFINITIES)}, not {affinity!r}")
        self.affinity = affinity

    def describe(self) -> str:
        return self.name if self.affinity == AFFINITIES[0] else f"{self.name}(affinity={self.affinity})"

    def gpu_preference(self, view: View, need: Need, memory: np.ndarray) -> np.ndarray:
        fullness = -ratio(np.maximum(view.free_units, 0), view.units_per_gpu)
        if self.affinity == "kind":
            return fullness
        return (view.gpu_shape == need.units).astype(np.float64) * 2.0 + fullness

    def node_score(self, view: View, need: Need, take: Take) -> np.ndarray:
        max_units, _ = view.ledger.max_node_capacity()
        left = view.free_units_sum
        base = np.clip(2.5 * ratio(max_units - left, max_units), 0.0, 2.5)
        if self.affinity == "kind":
            if need.count == 0:
                return np.zeros(len(view))
            counts = view.ledger.kind_count.take(view.rows, axis=0)
            kind = 0 if need.units < view.units_per_gpu else min(need.count, KIND_SLOTS - 1)
            present = counts[:, kind] > 0
            kinds = np.count_nonzero(counts, axis=1)
        else:
            present = view.ledger.shape_count[:, need.units].take(view.rows) > 0
            kinds = view.ledger.shape_kinds.take(view.rows)
        band = np.where(present, np.where(kinds == 1, 7.5, 5.0), np.where(kinds == 0, 2.5, 0.0))
        return base + band
