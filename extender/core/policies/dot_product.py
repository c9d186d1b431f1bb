"""dot-product (Tetris-style alignment, as the FGD paper's simulator defines it).

Per GPU, the free vector and the request vector are each normalised by that GPU's capacity over the
dimensions {units, memory}; the GPU's score is one minus their mean product, so the GPU whose free space the
request would use least "in the same direction" wins (the paper's simulator: "the larger the dot product, the
lower the score"), and the node scores by its best GPU set:

    gpu score  = 1 - (free_u/U * req_u/U + free_m/M * req_m/M) / 2
    e.g. U=100, M=16000: free 60 units / 8000 MiB, ask 40 / 4000: 1 - (0.6*0.4 + 0.5*0.25)/2 = 0.8175
    node score = 10 * mean of the gpu scores of the GPUs the pod would take
"""

from __future__ import annotations

import numpy as np

from .base import MAX_SCORE, Need, Policy, View, ratio


class DotProduct(Policy):
    name = "dot-product"

    def _gpu_scores(self, view: View, need: Need, memory: np.ndarray) -> np.ndarray:
        units = view.units_per_gpu
        free_u = ratio(np.clip(view.free_units, 0, None), units)
        free_m = ratio(np.clip(view.free_mem, 0, None), view.mem_usable)
        dot = free_u * (need.units / units) + free_m * ratio(memory, view.mem_usable)
        return 1.0 - dot / 2.0

    def gpu_preference(self, view: View, need: Need, memory: np.ndarray) -> np.ndarray:
        return self._gpu_scores(view, need, memory)

    def node_score(self, view: View, need: Need, take_units: np.ndarray, take_mem: np.ndarray) -> np.ndarray:
        taken = take_units > 0
        scores = self._gpu_scores(view, need, take_mem)
        return MAX_SCORE * np.clip(ratio((scores * taken).sum(axis=1), taken.sum(axis=1)), 0.0, 1.0)
