"""Experiments: *inflation* (the FGD paper's method) and *replay* (the trace's own arrivals and durations).

Inflation, as the paper's simulator does it: the pods are sorted by name and shuffled with the seed; random
copies of trace pods are appended while the GPU requested stays within ``ratio`` × the cluster's GPU capacity
(a copy that would pass it ends the inflation); every pod arrives once, in that order, and never leaves. The
cluster is recorded at every 1% of arrived GPU load (arrived = requested by pods that came, placed or not).

Ties: the published simulator gives every node a random name prefix from the seed and, in effect, takes the
first of the tied nodes in that order. ``node_order="shuffled"`` with ``tie_break="first"`` (the defaults) does
the same; measured on the default trace (seed 42), FGD leaves 4.84% of GPUs unallocated this way and 9.21% with
a fresh random draw among tied nodes at every pod (``tie_break="random"``): the tie-break decides the result.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from extender.core.inventory import NodeInventory
from extender.core.policies import Policy, View
from extender.core.policies.fgd import Fgd
from extender.core.workload import target_workload

from .engine import ARRIVE, EventQueue, SimCluster, TieBreak, percent
from .trace import SETTINGS, SimPod

PolicyFactory = Callable[[int, list], Policy]  # (seed, target workload) -> policy


@dataclass
class Checkpoint:
    arrived_pct: float   # GPU units requested by pods so far / capacity
    allocated_pct: float  # GPU units held / capacity
    fragmented_pct: float  # FGD fragmentation (free units the target workload cannot use) / capacity
    frag_ratio_pct: float  # fragmentation / free units


@dataclass
class InflationResult:
    policy: str
    seed: int
    tie_break: str
    pods: int
    placed: int
    failed: Counter = field(default_factory=Counter)
    curve: list[Checkpoint] = field(default_factory=list)

    @property
    def unallocated_at_100(self) -> float:
        """% of GPU capacity not allocated when the arrived load reaches 100% of capacity."""
        at = next((c for c in self.curve if c.arrived_pct >= 100.0), self.curve[-1] if self.curve else None)
        return 100.0 - at.allocated_pct if at else float("nan")


def workload_of(pods: Sequence[SimPod], coverage: float = 0.95) -> list:
    return target_workload((p.shape for p in pods), coverage)


def inflate(pods: Sequence[SimPod], capacity: int, ratio: float, rng: random.Random) -> list[SimPod]:
    """Shuffle, then append random copies until the next one would pass ``ratio`` × capacity (or, when the trace
    already asks for more, drop random pods until it does not)."""
    if ratio <= 0:
        raise ValueError(f"inflation ratio must be positive, not {ratio}")
    original = sorted(pods, key=lambda p: p.name)
    order = list(original)
    rng.shuffle(order)
    requested = sum(p.total_milli for p in order)
    target = ratio * capacity
    if requested > target:
        while requested > target and order:
            requested -= order.pop(rng.randrange(len(order))).total_milli
        return order
    copy = 0
    while original:
        pod = original[rng.randrange(len(original))]
        # the published simulator compares the per-GPU share here (not the pod's total), kept to compare alike
        if requested + pod.gpu_milli > target:
            break
        order.append(replace(pod, name=f"{pod.name}-copy-{copy}"))
        requested += pod.total_milli
        copy += 1
    return order


def inflation(nodes: Sequence[NodeInventory], pods: Sequence[SimPod], make: PolicyFactory, *, seed: int,
              ratio: float = 1.3, tie_break: TieBreak = "first", node_order: str = "shuffled",
              coverage: float = 0.95, name: str | None = None, cache: bool = True) -> InflationResult:
    if node_order not in ("shuffled", "as-given"):
        raise ValueError(f"node_order must be shuffled or as-given, not {node_order!r}")
    rng = random.Random(seed)
    workload = workload_of(pods, coverage)
    policy = make(seed, workload)
    capacity = sum(len(n.gpus) for n in nodes) * SETTINGS.units_per_gpu
    order = inflate(pods, capacity, ratio, rng)
    nodes = list(nodes)
    if node_order == "shuffled":
        rng.shuffle(nodes)
    cluster = SimCluster(nodes, policy, rng=rng, tie_break=tie_break, cache=cache)
    meter = FragmentationMeter(Fgd(workload))
    queue = EventQueue()
    for i, pod in enumerate(order):
        queue.push(float(i), ARRIVE, pod)
    result = InflationResult(policy=name or policy.describe(), seed=seed, tie_break=tie_break, pods=len(order),
                             placed=0)
    arrived, next_pct = 0, 1
    while queue:
        _, _, pod = queue.pop()
        arrived += pod.total_milli
        outcome = cluster.place(pod, pod.name)
        if outcome.node is None:
            result.failed[outcome.reason] += 1
        else:
            result.placed += 1
        while arrived * 100 >= next_pct * cluster.gpu_capacity:
            result.curve.append(checkpoint(cluster, meter, arrived))
            next_pct += 1
    return result


class FragmentationMeter:
    """The cluster's FGD fragmentation (free units the target workload cannot use), kept per node and worked out
    again only for the nodes whose ledger row changed since the last reading: a node's value depends on its row
    alone, so the per-node values, and their sum, are those of measuring every node afresh."""

    def __init__(self, fgd: Fgd) -> None:
        self.fgd = fgd
        self._versions: np.ndarray | None = None
        self._values = np.zeros(0)

    def per_node(self, cluster: SimCluster, free: np.ndarray, cpu: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Per node, from :meth:`SimCluster.free_units_by_node`'s ``free``, ``cpu`` and ``rows``."""
        versions = cluster.ledger.row_version[rows]
        if self._versions is None or len(self._versions) != len(rows):
            self._versions, self._values = np.full(len(rows), -1, dtype=np.int64), np.zeros(len(rows))
        stale = np.flatnonzero(self._versions != versions)
        if len(stale):
            access = self.fgd.shape_access(View(cluster.ledger, rows[stale]))
            self._values[stale] = self.fgd.fragmentation(free[stale], cpu[stale], access)
            self._versions[stale] = versions[stale]
        return self._values


def checkpoint(cluster: SimCluster, meter: FragmentationMeter, arrived: int) -> Checkpoint:
    free, cpu, rows = cluster.free_units_by_node()
    fragmented = float(meter.per_node(cluster, free, cpu, rows).sum())
    idle = float(free.sum())
    capacity = cluster.gpu_capacity
    return Checkpoint(arrived_pct=percent(arrived, capacity), allocated_pct=percent(cluster.allocated, capacity),
                      fragmented_pct=percent(fragmented, capacity), frag_ratio_pct=percent(fragmented, idle))
