"""The discrete-event engine and the simulated cluster, over ``extender/core``'s own ledger, placement and policies.

* :class:`EventQueue`: a heap of ``(time, priority, sequence, event)``; time is simulated seconds (no wall
  clock), ``priority`` orders events at the same instant (completions free capacity before arrivals are
  placed, and retries come last), ``sequence`` keeps insertion order among equals.
* :class:`SimCluster`: a :class:`~extender.core.Ledger` of the cluster's nodes; :meth:`SimCluster.place` runs
  :func:`~extender.core.evaluate` over every node, picks the best score with the configured tie-break, takes the
  GPUs :meth:`~extender.core.placement.Evaluation.placement` chose and reserves them: the same steps as the
  extender's Filter, Prioritize and Bind.

Tie-break (reported with every result, since published numbers depend on it):

* ``random`` (default): scores are first cut to ``resolution`` (0.1 on the 0..10 scale is the published
  simulator's integer 0..100 score), then one of the tied nodes is drawn with the run's seeded RNG, as
  kube-scheduler's ``selectHost`` does;
* ``first``: the first tied node in cluster order; ``name``: the smallest name.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

import numpy as np

from extender.core import Ledger, evaluate
from extender.core.inventory import NodeInventory
from extender.core.policies import Policy

from .trace import SETTINGS, SimPod

TieBreak = Literal["random", "first", "name"]
COMPLETE, ARRIVE, RETRY = 0, 1, 2  # event priorities at the same instant


@dataclass(order=True)
class _Entry:
    time: float
    priority: int
    sequence: int
    event: Any = field(compare=False)


class EventQueue:
    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._sequence = 0
        self.now = 0.0

    def push(self, time: float, priority: int, event: Any) -> None:
        if time < self.now:
            raise ValueError(f"event at {time} is before now ({self.now})")
        heapq.heappush(self._heap, _Entry(time, priority, self._sequence, event))
        self._sequence += 1

    def pop(self) -> tuple[float, int, Any]:
        entry = heapq.heappop(self._heap)
        self.now = entry.time
        return entry.time, entry.priority, entry.event

    def __len__(self) -> int:
        return len(self._heap)


@dataclass(frozen=True, slots=True)
class Outcome:
    node: str | None
    reason: str | None = None  # why it did not fit: the category of the commonest misfit


class SimCluster:
    def __init__(self, nodes: Iterable[NodeInventory], policy: Policy, *, rng: random.Random,
                 tie_break: TieBreak = "random", resolution: float = 0.1) -> None:
        if tie_break not in ("random", "first", "name"):
            raise ValueError(f"tie_break must be random, first or name, not {tie_break!r}")
        if resolution < 0:
            raise ValueError(f"resolution must be >= 0, not {resolution}")
        self.ledger = Ledger(SETTINGS)
        self.nodes = list(nodes)
        for node in self.nodes:
            self.ledger.upsert_node(node)
        self.names = [n.name for n in self.nodes]
        self.policy = policy
        self.rng = rng
        self.tie_break = tie_break
        self.resolution = resolution
        self.gpu_capacity = sum(len(n.gpus) for n in self.nodes) * SETTINGS.units_per_gpu
        self.allocated = 0  # GPU units held by placed pods
        self._held: dict[str, int] = {}

    def place(self, pod: SimPod, uid: str) -> Outcome:
        request = pod.request(uid)
        evaluation = evaluate(self.ledger, request, self.names, self.policy)
        if not evaluation.fits:
            counts = evaluation.rejections
            reason = max(sorted(counts), key=counts.get) if counts else "no-nodes"
            return Outcome(None, reason)
        node = self._choose(evaluation.fits, evaluation.scores)
        placement = evaluation.placement(node)
        self.ledger.reserve(placement.assignment(request, self.policy.name))
        self.ledger.commit(uid)
        self._held[uid] = pod.total_milli
        self.allocated += pod.total_milli
        return Outcome(node)

    def remove(self, uid: str) -> None:
        if self.ledger.release(uid) is not None:
            self.allocated -= self._held.pop(uid)

    def _choose(self, fits: list[str], scores: np.ndarray) -> str:
        if self.resolution:
            scores = np.floor(scores / self.resolution + 1e-9)
        tied = np.flatnonzero(scores == scores.max())
        if len(tied) == 1 or self.tie_break == "first":
            return fits[int(tied[0])]
        if self.tie_break == "name":
            return min(fits[i] for i in tied.tolist())
        return fits[int(tied[self.rng.randrange(len(tied))])]

    def free_units_by_node(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(free units per GPU (nodes, GPUs), free CPU per node, rows) for metrics."""
        rows = np.array([self.ledger.row_of(n) for n in self.names])
        free = np.where(self.ledger.offered_units[rows] > 0, self.ledger.free_units[rows], 0)
        cpu = self.ledger.cpu_total[rows] - self.ledger.cpu_used[rows]
        return free, cpu, rows


def percent(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else math.nan
