"""GPU-clustering (the FGD paper's GpuClustering): keep pods of the same GPU share together.

A node's "affinity" is the set of per-GPU unit shares of the pods on it. Four bands, each 2.5 wide, and within
a band the fuller node wins (scaled by the largest node in the cluster):

    base = 2.5 * (max node units - free units on node) / max node units
    pod's share present and the only one: base + 7.5     present among others: base + 5
    node empty:                            base + 2.5     only other shares:    base
    e.g. max 800 units, node with 500 free holding only 50-unit pods, ask 50: 2.5 * 300/800 + 7.5 = 8.4375

GPU preference: GPUs holding only the same share first, then the fewest free units.
"""

from __future__ import annotations

import numpy as np

from .base import Need, Policy, View, ratio


class GpuClustering(Policy):
    name = "gpu-clustering"

    def gpu_preference(self, view: View, need: Need, memory: np.ndarray) -> np.ndarray:
        same = (view.gpu_shape == need.units).astype(np.float64)
        return same * 2.0 - ratio(np.clip(view.free_units, 0, None), view.units_per_gpu)

    def node_score(self, view: View, need: Need, take_units: np.ndarray, take_mem: np.ndarray) -> np.ndarray:
        max_units, _ = view.ledger.max_node_capacity()
        left = np.clip(view.free_units, 0, None).sum(axis=1)
        base = 2.5 * ratio(max_units - left, max_units)
        present = view.ledger.shape_count[:, need.units].take(view.rows) > 0
        kinds = view.ledger.shape_kinds.take(view.rows)
        band = np.where(present, np.where(kinds == 1, 7.5, 5.0), np.where(kinds == 0, 2.5, 0.0))
        return np.clip(base, 0.0, 2.5) + band
