"""best-fit: the tightest fit, measured in absolute leftover (the FGD paper simulator's BestFit).

Leftover is scaled by the largest node in the cluster, not by the node itself, so a small node left nearly
full beats a big node left half full (this is what separates best-fit from binpack):

    node score = 10 * (1 - 0.5 * (free units - requested) / max node units
                         - 0.5 * (free MiB - requested) / max node MiB)
    e.g. largest node 800 units / 128000 MiB; node with 150 units and 20000 MiB free, ask 100 + 8000:
         10 * (1 - 0.5 * 50 / 800 - 0.5 * 12000 / 128000) = 10 * (1 - 0.03125 - 0.046875) = 9.21875
    GPU preference = -(units left after placing), memory left as a fraction below one unit to break ties.
"""

from __future__ import annotations

import numpy as np

from .base import MAX_SCORE, Need, Policy, View, ratio


class BestFit(Policy):
    name = "best-fit"

    def gpu_preference(self, view: View, need: Need, memory: np.ndarray) -> np.ndarray:
        units_left = view.free_units - need.units
        memory_left = ratio(view.free_mem - memory, view.mem_usable + 1)  # in [0, 1): a tie-break only
        return -(units_left + memory_left)

    def node_score(self, view: View, need: Need, take_units: np.ndarray, take_mem: np.ndarray) -> np.ndarray:
        max_units, max_mem = view.ledger.max_node_capacity()
        units_left = (np.clip(view.free_units, 0, None) - take_units).sum(axis=1)
        memory_left = (np.clip(view.free_mem, 0, None) - take_mem).sum(axis=1)
        leftover = 0.5 * ratio(units_left, max_units) + 0.5 * ratio(memory_left, max_mem)
        return MAX_SCORE * np.clip(1.0 - leftover, 0.0, 1.0)
