"""first-fit: the lowest-index GPU that fits; every fitting node scores the same.

Which node is "first" is the chooser's explicit tie-break (node name by default), so first-fit is the
ordered scan it is named after. In the extender the score is flat and kube-scheduler's other plugins decide.
"""

from __future__ import annotations

import numpy as np

from .base import MAX_SCORE, Need, Policy, Take, View


class FirstFit(Policy):
    name = "first-fit"

    def gpu_preference(self, view: View, need: Need, memory: np.ndarray) -> np.ndarray:
        # lower position first: preference = -position
        return -view.positions.astype(np.float64)

    def node_score(self, view: View, need: Need, take: Take) -> np.ndarray:
        return np.full(len(view), MAX_SCORE)
