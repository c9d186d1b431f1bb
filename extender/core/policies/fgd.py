"""FGD, fragmentation gradient descent (Weng et al., "Beware of Fragmentation", USENIX ATC '23).

A node's **fragmentation** for a target workload W (pod shapes with probabilities) counts the free GPU units
that the shapes of W could not use there, weighted by how often each shape comes:

    F(node) = Σ_s p_s · f_s(node)
    f_s = Σ free units of the GPUs each holding less than s's share      if s fits on the node (enough such
                                                                           GPUs, CPU, an allowed model)
        = all free units of the node                                      otherwise (also for CPU-only s)

FGD places a pod where F grows least: for each candidate (node, GPU) the score is
``floor(100 · sigmoid((F_before − F_after) / unitsPerGpu)) / 10`` on our 0..10 scale, the published
simulator's integer score (so its ties are kept). A pod on one GPU takes the best-scoring GPU (lowest index
among equals); a pod on several whole GPUs takes free GPUs lowest index first, and CPU-only pods score the
change their CPU causes.

The workload is a parameter: ``[(cpu_milli, gpu_count, units per GPU, models or None, probability), ...]``.
The simulator builds it from the trace (the most frequent shapes covering 95% of pods, renormalised, see
:func:`target_workload`); the extender from recently seen pods. Per-node results are cached by the ledger's
row version, so only nodes that changed since are computed again.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Iterable, Sequence

import numpy as np

from ..resources import model_matches
from .base import Need, Policy, Take, View

Shape = tuple[int, int, int, tuple[str, ...] | None]  # cpu milli, GPU count, units per GPU, models


def target_workload(shapes: Iterable[Shape], coverage: float = 0.95) -> list[tuple[int, int, int, tuple[str, ...] | None, float]]:
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


class RecentShapes:
    """The shapes of the last ``window`` GPU pods seen: the extender's target workload for FGD. A count window,
    not a time window, so the same sequence of pods gives the same workload (no clock in the core)."""

    def __init__(self, window: int = 1000, coverage: float = 0.95) -> None:
        if window < 1:
            raise ValueError(f"FGD window must be at least 1 pod, not {window}")
        if not 0 < coverage <= 1:
            raise ValueError(f"FGD coverage must be in (0, 1], not {coverage}")
        self._shapes: deque[Shape] = deque(maxlen=window)
        self.coverage = coverage
        self.version = 0  # bumped by every observation: a policy built at an older version is out of date

    def observe(self, shape: Shape) -> None:
        self._shapes.append(shape)
        self.version += 1

    def __len__(self) -> int:
        return len(self._shapes)

    def workload(self, units_per_gpu: int) -> list[tuple[int, int, int, tuple[str, ...] | None, float]]:
        """The target workload of the window; before any pod is seen, whole-GPU pods."""
        if not self._shapes:
            return [(0, 1, units_per_gpu, None, 1.0)]
        return target_workload(self._shapes, self.coverage)


class Fgd(Policy):
    name = "fgd"

    def __init__(self, workload: Sequence[tuple] = ()) -> None:
        if not workload:
            raise ValueError("fgd needs a target workload: [(cpu_milli, gpu_count, units, models, probability), ...]")
        rows = [tuple(w) for w in workload]
        for w in rows:
            if len(w) != 5 or w[4] < 0 or w[1] < 0 or w[2] < 0:
                raise ValueError(f"fgd workload entry {w!r}: expected (cpu_milli, gpu_count, units, models, p >= 0)")
        self.workload = rows
        self.cpu = np.array([w[0] for w in rows], dtype=np.int64)
        self.count = np.array([w[1] for w in rows], dtype=np.int64)
        self.units = np.array([w[2] for w in rows], dtype=np.int64)
        self.models = [tuple(w[3]) if w[3] else None for w in rows]
        self.p = np.array([w[4] for w in rows], dtype=np.float64)
        # the per-GPU sums depend on a shape's share alone: computed once per distinct share, then spread
        self._shares, self._share_of = np.unique(self.units, return_inverse=True)
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # pod shape -> (row version, per-GPU score)

    def describe(self) -> str:
        return f"fgd({len(self.workload)} shapes)"

    # ------------------------------------------------------------------ fragmentation
    def shape_access(self, view: View) -> np.ndarray:
        """(nodes, shapes): may shape s run on this node's GPU model (a node's GPUs share one model)."""
        out = np.ones((len(view), len(self.workload)), dtype=bool)
        restricted = [s for s, allowed in enumerate(self.models) if allowed is not None]
        if restricted:
            models = view.ledger.model.take(view.rows, axis=0)[:, 0]
            names = view.ledger.model_names()
            for s in restricted:
                lut = np.array([model_matches(self.models[s], m) for m in names] + [False])  # -1: no GPU
                out[:, s] = lut[models]
        return out

    def fragmentation(self, free: np.ndarray, cpu_free: np.ndarray, access: np.ndarray) -> np.ndarray:
        """F for each row of ``free`` (…, GPUs) with ``cpu_free`` (…) and ``access`` (…, shapes)."""
        free = np.maximum(free, 0)
        below = free[..., :, None] < self._shares                                 # (…, G, shares)
        stranded = (free[..., :, None] * below).sum(axis=-2)                      # (…, shares)
        usable = (~below).sum(axis=-2)
        return self._weigh(stranded, usable, free.sum(axis=-1), self._node_ok(cpu_free, access))

    def _node_ok(self, cpu_free: np.ndarray, access: np.ndarray) -> np.ndarray:
        """(…, shapes): may the shape run on the node at all (model, CPU, and it asks for a GPU)."""
        return access & (cpu_free[..., None] >= self.cpu) & (self.units > 0)

    def _weigh(self, stranded: np.ndarray, usable: np.ndarray, total: np.ndarray, node_ok: np.ndarray) -> np.ndarray:
        """Σ_s p_s · f_s from the stranded units and usable GPUs per distinct share (…, shares), the free total
        (…) and ``node_ok`` (…, shapes)."""
        stranded, usable = stranded.take(self._share_of, axis=-1), usable.take(self._share_of, axis=-1)
        satisfied = (usable >= self.count) & node_ok
        # a sum along the last axis, not a matrix product: BLAS may sum in another order for another shape of
        # array, and the same node must score the same whether it is computed alone or among others
        return (np.where(satisfied, stranded, total[..., None]) * self.p).sum(axis=-1)

    def fragmentation_after_one(self, free: np.ndarray, cpu_free: np.ndarray, access: np.ndarray, units: int,
                                cpu_milli: int) -> tuple[np.ndarray, np.ndarray]:
        """(F now (n,), F after a pod of ``units`` on one GPU and ``cpu_milli`` CPU, on each GPU in turn (n, G)),
        for rows of ``free`` (n, G).

        The same sums as :meth:`fragmentation`, updated for the one GPU that changes instead of summed again,
        so the cost is (n, G, shares) rather than (n, G, G, shares)."""
        free = np.maximum(free, 0)
        below = free[:, :, None] < self._shares                                   # (n, G, shares)
        share = free[:, :, None] * below
        stranded, usable, total = share.sum(axis=1), (~below).sum(axis=1), free.sum(axis=1)
        before = self._weigh(stranded, usable, total, self._node_ok(cpu_free, access))
        left = np.maximum(free - units, 0)                                        # (n, G): GPU g after the pod
        below_left = left[:, :, None] < self._shares
        after = self._weigh(stranded[:, None, :] - share + left[:, :, None] * below_left,
                            usable[:, None, :] - ~below + ~below_left,
                            total[:, None] - free + left, self._node_ok(cpu_free - cpu_milli, access)[:, None, :])
        return before, after

    # ------------------------------------------------------------------ policy
    def gpu_preference(self, view: View, need: Need, memory: np.ndarray) -> np.ndarray:
        if need.count != 1:  # whole GPUs: lowest index first (the published simulator's exclusive allocation)
            return -view.positions.astype(np.float64)
        return self._single_gpu_scores(view, need)

    def node_score(self, view: View, need: Need, take: Take) -> np.ndarray:
        if need.count == 1 and need.units > 0:
            scores = self._single_gpu_scores(view, need)
            return np.where(take.charged, scores, -np.inf).max(axis=1).clip(0.0, None)
        access = self.shape_access(view)
        cpu = view.cpu_room  # unlimited where the core does not account CPU
        before = self.fragmentation(view.free_units, cpu, access)
        after = self.fragmentation(view.free_units - take.units, cpu - need.cpu_milli, access)
        return _score(before - after, view.units_per_gpu)

    def _single_gpu_scores(self, view: View, need: Need) -> np.ndarray:
        """(nodes, GPUs): the score of putting this one-GPU pod on each GPU, cached per row version (and per
        view: gpu_preference and node_score of one evaluation ask for the same)."""
        memo_key = (id(self), need.units, need.cpu_milli)
        known = view.memo.get(memo_key)
        if known is not None:
            return known
        ledger = view.ledger
        if getattr(self, "_ledger", None) is not ledger:  # row versions belong to one ledger
            self._cache.clear()
            self._ledger = ledger
        key = (need.units, need.cpu_milli)
        versions, scores = self._cache.get(key, (None, None))
        capacity = len(ledger.row_version)
        width = view.free_units.shape[1]
        if versions is None or len(versions) != capacity or scores.shape[1] != width:
            versions = np.full(capacity, -1, dtype=np.int64)
            scores = np.zeros((capacity, width))
            self._cache[key] = (versions, scores)
        current = ledger.row_version.take(view.rows)
        stale = np.flatnonzero(versions.take(view.rows) != current)
        if len(stale):
            sub = View(ledger, view.rows[stale])
            access = self.shape_access(sub)
            before, after = self.fragmentation_after_one(sub.free_units, sub.cpu_room, access, need.units,
                                                         need.cpu_milli)
            fits = sub.free_units >= need.units
            rows = view.rows[stale]
            scores[rows] = np.where(fits, _score(before[:, None] - after, view.units_per_gpu), -np.inf)
            versions[rows] = current[stale]
        view.memo[memo_key] = out = scores.take(view.rows, axis=0)
        return out


def _score(decrease: np.ndarray, units_per_gpu: int) -> np.ndarray:
    """floor(100 · sigmoid(ΔF / unitsPerGpu)) / 10: the published integer score on a 0..10 scale."""
    return np.floor(100.0 / (1.0 + np.exp(-decrease / units_per_gpu))) / 10.0
