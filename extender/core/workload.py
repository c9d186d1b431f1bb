"""Target workloads: the pod shapes a cluster expects, with how often each comes, for policies that plan for
the pods still to arrive (FGD).

A workload is a list of ``(cpu_milli, gpu_count, units per GPU, models or None, probability)``. The simulator
takes the trace's (:func:`target_workload` of its pods); the extender learns it from the pods it sees
(:class:`RecentShapes`). A policy reads either through the same two members, ``version`` and ``shapes()``, and
works out again what depends on the workload only when the version moves.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import TYPE_CHECKING, Iterable, Protocol, Sequence

if TYPE_CHECKING:
    from .resources import PodRequest

Shape = tuple[int, int, int, tuple[str, ...] | None]  # cpu milli, GPU count, units per GPU, models
WorkloadShape = tuple[int, int, int, tuple[str, ...] | None, float]  # ... and its probability


class Workload(Protocol):
    version: int

    def shapes(self) -> list[WorkloadShape]: ...


def pod_shape(request: "PodRequest") -> Shape | None:
    """A pod as a workload counts it, or None for a pod that is not one GPU container (not counted)."""
    single = request.single
    if single is None:
        return None
    return (request.cpu_milli, single.count, single.units, request.models)


def target_workload(shapes: Iterable[Shape], coverage: float = 0.95) -> list[WorkloadShape]:
    """The most frequent shapes, in decreasing count, until they cover ``coverage`` of all pods; renormalised.

    Equal counts are ordered as the published simulator orders them (larger CPU, then larger share, more GPUs,
    then model text, first), so the cut falls on the same shapes.
    """
    counts = Counter(shapes)
    if not counts:
        return []
    total = sum(counts.values())
    ordered = sorted(counts.items(), key=lambda kv: (kv[1], kv[0][0], kv[0][2], kv[0][1], "|".join(kv[0][3] or ())),
                     reverse=True)
    chosen, covered = [], 0
    for shape, count in ordered:
        if covered >= coverage * total:
            break
        chosen.append((shape, count))
        covered += count
    return [(*shape, count / covered) for shape, count in chosen]


class FixedWorkload:
    """A workload known in advance (the simulator's, from the trace): one version forever."""

    version = 0

    def __init__(self, shapes: Sequence[Sequence]) -> None:
        rows = [tuple(w) for w in shapes]
        for w in rows:
            if len(w) != 5 or w[4] < 0 or w[1] < 0 or w[2] < 0:
                raise ValueError(f"workload entry {w!r}: expected (cpu_milli, gpu_count, units, models, p >= 0)")
        self._shapes = [(w[0], w[1], w[2], tuple(w[3]) if w[3] else None, w[4]) for w in rows]

    def shapes(self) -> list[WorkloadShape]:
        return self._shapes


class RecentShapes:
    """The shapes of the last ``window`` GPU pods seen: the extender's target workload. A count window, not a
    time window, so the same sequence of pods gives the same workload (no clock in the core).

    Each time a tenth of the window's pods are new (after every pod while the window is small; every 100 pods
    once a window of 1000 is full), the workload is worked out again from the window, and ``version`` moves only
    if it differs from the one in use by more than ``tolerance`` in total variation (half the sum of the
    differences of each shape's probability; a shape absent from one counts 0 there). A policy keeps what it
    derived from the workload, per node, while the version stands: an estimate that wanders by a few pods
    sampled differently does not make it score every node again. Before any pod is seen, the workload is
    whole-GPU pods.
    """

    def __init__(self, window: int = 1000, coverage: float = 0.95, *, units_per_gpu: int = 100,
                 tolerance: float = 0.05) -> None:
        if window < 1:
            raise ValueError(f"FGD window must be at least 1 pod, not {window}")
        if not 0 < coverage <= 1:
            raise ValueError(f"FGD coverage must be in (0, 1], not {coverage}")
        if not 0 <= tolerance < 1:
            raise ValueError(f"FGD workload tolerance must be in [0, 1), not {tolerance}")
        self._shapes: deque[Shape] = deque(maxlen=window)
        self.coverage = coverage
        self.tolerance = tolerance
        self.units_per_gpu = units_per_gpu
        self.observed = 0  # pods seen in all
        self.version = 0
        self._checked_at = 0  # ``observed`` when the window was last compared with the workload in use
        self._workload: list[WorkloadShape] = [(0, 1, units_per_gpu, None, 1.0)]

    def observe(self, shape: Shape) -> None:
        self._shapes.append(shape)
        self.observed += 1
        if self.observed - self._checked_at >= max(1, len(self._shapes) // 10):
            self._checked_at = self.observed
            fresh = target_workload(self._shapes, self.coverage)
            if distance(fresh, self._workload) > self.tolerance:
                self._workload = fresh
                self.version += 1

    def __len__(self) -> int:
        return len(self._shapes)

    def shapes(self) -> list[WorkloadShape]:
        return self._workload


def distance(a: Sequence[WorkloadShape], b: Sequence[WorkloadShape]) -> float:
    """Total variation between two workloads: half the sum, over shapes, of the difference of probabilities."""
    p = {tuple(w[:4]): w[4] for w in a}
    q = {tuple(w[:4]): w[4] for w in b}
    return sum(abs(p.get(shape, 0.0) - q.get(shape, 0.0)) for shape in p.keys() | q.keys()) / 2


def as_workload(workload: Workload | Sequence[Sequence] | None) -> Workload:
    """A workload object from a workload or a plain list of shapes; ValueError when there is none."""
    if workload is None or (isinstance(workload, Sequence) and not workload):
        raise ValueError("needs a target workload: [(cpu_milli, gpu_count, units, models, probability), ...]")
    if isinstance(workload, Sequence):
        return FixedWorkload(workload)
    return workload
