"""GPU-packing (the FGD paper's GpuPacking): share GPUs already in use, then idle GPUs of used nodes, and
touch idle nodes last. On the paper's 0..100 scale, divided by 10 here:

    case 1, only GPUs already shared are taken:  max(100 - floor(Σ_taken free% / 10), 50)
            e.g. one GPU with 35 of 100 units free taken: 100 - floor(35/10) = 97 -> 9.7
    case 2, idle GPUs of a used node are taken:  max(50 - idle GPUs taken, 33)        e.g. 1 -> 49 -> 4.9
    case 3, every GPU of the node is idle:       max(33 - idle GPUs, idle GPUs)       e.g. 8 -> 25 -> 2.5
    (case 3's lower cap is the published simulator's, kept so that results compare.)

A pod without GPUs scores 0 on every node. Integer steps as in the published simulator, so its ties are kept.
GPU preference: fewest free units first (the paper's "minimum GPU left first").
"""

from __future__ import annotations

import numpy as np

from .base import Need, Policy, Take, View


class GpuPacking(Policy):
    name = "gpu-packing"

    def gpu_preference(self, view: View, need: Need, memory: np.ndarray) -> np.ndarray:
        return -view.free_units.astype(np.float64)

    def node_score(self, view: View, need: Need, take: Take) -> np.ndarray:
        offered = view.offered_units > 0
        idle = offered & (view.used_units == 0) & (view.pods == 0)
        idle_count = idle.sum(axis=1)
        taken = take.charged
        idle_taken = (taken & idle).sum(axis=1)
        if need.count == 0:  # a pod without GPUs: no preference, as in the paper
            return np.zeros(len(view))
        free_percent = (np.maximum(view.free_units, 0) * 100 // view.units_per_gpu) * taken
        case1 = np.maximum(100.0 - free_percent.sum(axis=1) // 10, 50.0)
        case2 = np.maximum(50.0 - idle_taken, 33.0)
        case3 = np.maximum(33.0 - idle_count, idle_count.astype(np.float64))
        all_idle = idle_count == offered.sum(axis=1)
        score = np.where(all_idle, case3, np.where(idle_taken > 0, case2, case1))
        return score / 10.0
