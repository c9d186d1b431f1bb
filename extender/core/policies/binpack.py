"""binpack (MostAllocated): fill the most used nodes and GPUs first, keeping whole GPUs free.

    node score = 10 * mean over {units, memory} of (charged + requested) / capacity
    e.g. 8 GPUs (800 units, 8 x 16000 MiB), 300 units and 40000 MiB charged, ask 100 units + 8000 MiB:
         10 * ((300 + 100) / 800 + (40000 + 8000) / 128000) / 2 = 10 * (0.5 + 0.375) / 2 = 4.375
    GPU preference = mean of (units charged / unitsPerGpu, MiB charged / usable MiB): fullest first.
"""

from __future__ import annotations

import numpy as np

from .base import MAX_SCORE, Need, Policy, Take, View, allocated_fraction, gpu_allocated_fraction


class Binpack(Policy):
    name = "binpack"

    def gpu_preference(self, view: View, need: Need, memory: np.ndarray) -> np.ndarray:
        return gpu_allocated_fraction(view)

    def node_score(self, view: View, need: Need, take: Take) -> np.ndarray:
        return MAX_SCORE * allocated_fraction(view, take)
