"""best-fit: the tightest fit, measured in absolute leftover (the FGD paper simulator's BestFit).

Leftover is scaled by the largest node in the cluster, not by the node itself, so a small node left nearly
full beats a big node left half full (this is what separates best-fit from binpack). ``dims`` says which two
resources are weighed, half each:

* ``"units+memory"`` (default, the extender's): GPU units and GPU memory, as the core accounts them::

    node score = 10 * (1 - 0.5 * (free units - requested) / max node units
                         - 0.5 * (free MiB - requested) / max node MiB)
    e.g. largest node 800 units / 128000 MiB; node with 150 units and 20000 MiB free, ask 100 + 8000:
         10 * (1 - 0.5 * 50 / 800 - 0.5 * 12000 / 128000) = 10 * (1 - 0.03125 - 0.046875) = 9.21875

* ``"cpu+units"``: host CPU and GPU units, the FGD paper's simulator (it does not model GPU memory)::

    node score = 10 * (1 - 0.5 * (free CPU - requested) / max node CPU - 0.5 * (free units - requested) / max units)
    e.g. largest node 128000 milli-CPU / 8000 units; node with 32000 CPU and 1500 units free, ask 8000 + 500:
         10 * (1 - 0.5 * 24000 / 128000 - 0.5 * 1000 / 8000) = 10 * (1 - 0.09375 - 0.0625) = 8.4375
    (nodes whose CPU the core does not account, the extender's, weigh GPU units alone)

GPU preference, both: -(units left after placing), memory left as a fraction below one unit to break ties.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .base import MAX_SCORE, Need, Policy, Take, View, cpu_left, named, ratio


def _gpu_memory_left(view: View, need: Need, take: Take) -> np.ndarray:
    """GPU memory left on the node after the pod, scaled by the largest node's."""
    _, max_mem = view.ledger.max_node_capacity()
    return ratio(np.maximum(view.free_mem, 0).sum(axis=1) - take.mem_sum, max_mem)


def _host_cpu_left(view: View, need: Need, take: Take) -> np.ndarray:
    """Host CPU left on the node after the pod, scaled by the largest node's (0 where CPU is not accounted)."""
    return ratio(cpu_left(view, need), view.ledger.max_node_cpu())


# the leftover weighed beside GPU units, by ``dims``
SECOND_LEFTOVER: dict[str, Callable[[View, Need, Take], np.ndarray]] = {
    "units+memory": _gpu_memory_left,
    "cpu+units": _host_cpu_left,
}


class BestFit(Policy):
    name = "best-fit"

    def __init__(self, dims: str = "units+memory") -> None:
        self.dims = dims
        self._second_leftover = named(SECOND_LEFTOVER, dims, policy=self.name, parameter="dims")

    def gpu_preference(self, view: View, need: Need, memory: np.ndarray) -> np.ndarray:
        memory_left = (view.free_mem - memory) / (view.mem_usable + 1)  # in [0, 1): a tie-break only
        return (need.units - view.free_units) - memory_left  # -(units left + memory left), bit for bit

    def node_score(self, view: View, need: Need, take: Take) -> np.ndarray:
        max_units, _ = view.ledger.max_node_capacity()
        units_left = ratio(view.free_units_sum - take.units_sum, max_units)
        leftover = 0.5 * units_left + 0.5 * self._second_leftover(view, need, take)
        return MAX_SCORE * (1.0 - leftover)  # held to [0, 10] by the caller
