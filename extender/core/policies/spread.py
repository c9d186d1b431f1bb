"""spread (LeastAllocated): put each pod where the most is left, GPUs least used first.

    node score = 10 * mean over {units, memory} of (capacity - charged - requested) / capacity
               = 10 - binpack score
    e.g. the binpack example (4.375) scores 10 - 4.375 = 5.625 here.
    GPU preference = -(mean charged fraction): emptiest first.
"""

from __future__ import annotations

import numpy as np

from .base import MAX_SCORE, Need, Policy, Take, View, allocated_fraction, gpu_allocated_fraction


class Spread(Policy):
    name = "spread"

    def gpu_preference(self, view: View, need: Need, memory: np.ndarray) -> np.ndarray:
        return -gpu_allocated_fraction(view)

    def node_score(self, view: View, need: Need, take: Take) -> np.ndarray:
        return MAX_SCORE * (1.0 - allocated_fraction(view, take))
