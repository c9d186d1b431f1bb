"""dot-product (Tetris-style alignment, as the FGD paper's simulator defines it): the larger the dot product of
the node's free vector and the pod's request, the lower the score. ``dims`` names which vectors:

* ``"units+memory"`` (default, the extender's, :class:`PerGpu`): per GPU, over {units, memory}, each normalised
  by that GPU's capacity; the node scores by the GPUs the pod would take, and the GPU whose free space the
  request would use least "in the same direction" is taken first::

    gpu score  = 1 - (free_u/U * req_u/U + free_m/M * req_m/M) / 2
    e.g. U=100, M=16000: free 60 units / 8000 MiB, ask 40 / 4000: 1 - (0.6*0.4 + 0.5*0.25)/2 = 0.8175
    node score = 10 * mean of the gpu scores of the GPUs the pod would take

* ``"cpu+units"`` (:class:`NodeVector`): the paper's simulator (``merge`` GPU dimension, ``max``
  normalisation): one vector per node, {host CPU, all free GPU units}, normalised by the largest node; GPUs are
  taken tightest fit first::

    node score = 10 * (1 - (free CPU/C * req CPU/C + free units/G * req units/G) / 2)
    e.g. C=128000, G=8000: free 64000 CPU / 4000 units, ask 16000 / 1000:
         10 * (1 - (0.5*0.125 + 0.5*0.125)/2) = 9.375
"""

from __future__ import annotations

import numpy as np

from .base import MAX_SCORE, Need, Policy, Take, View, named, ratio


class PerGpu:
    """``units+memory``: per-GPU vectors of units and memory."""

    @staticmethod
    def gpu_scores(view: View, need: Need, memory: np.ndarray) -> np.ndarray:
        units = view.units_per_gpu
        free_u = ratio(np.maximum(view.free_units, 0), units)
        free_m = ratio(np.maximum(view.free_mem, 0), view.mem_usable)
        dot = free_u * (need.units / units) + free_m * ratio(memory, view.mem_usable)
        return 1.0 - dot / 2.0

    def gpu_preference(self, view: View, need: Need, memory: np.ndarray) -> np.ndarray:
        return self.gpu_scores(view, need, memory)

    def node_score(self, view: View, need: Need, take: Take) -> np.ndarray:
        taken = take.charged
        scores = self.gpu_scores(view, need, take.mem)
        return MAX_SCORE * ratio((scores * taken).sum(axis=1), taken.sum(axis=1))  # held to [0, 10] by the caller


class NodeVector:
    """``cpu+units``: one vector per node of host CPU and all free GPU units."""

    def gpu_preference(self, view: View, need: Need, memory: np.ndarray) -> np.ndarray:
        return -view.free_units.astype(np.float64)

    def node_score(self, view: View, need: Need, take: Take) -> np.ndarray:
        max_units, _ = view.ledger.max_node_capacity()
        max_cpu = view.ledger.max_node_cpu()
        free_cpu = np.where(view.cpu_total >= 0, view.cpu_free, 0)
        dot = (ratio(free_cpu, max_cpu) * ratio(need.cpu_milli, max_cpu)
               + ratio(view.free_units_sum, max_units) * ratio(take.units_sum, max_units))
        return MAX_SCORE * (1.0 - dot / 2.0)  # held to [0, 10] by the caller


VECTORS = {"units+memory": PerGpu(), "cpu+units": NodeVector()}


class DotProduct(Policy):
    name = "dot-product"

    def __init__(self, dims: str = "units+memory") -> None:
        self.dims = dims
        self._vectors = named(VECTORS, dims, policy=self.name, parameter="dims")

    def gpu_preference(self, view: View, need: Need, memory: np.ndarray) -> np.ndarray:
        return self._vectors.gpu_preference(view, need, memory)

    def node_score(self, view: View, need: Need, take: Take) -> np.ndarray:
        return self._vectors.node_score(view, need, take)
