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

The workload is a parameter (:mod:`extender.core.workload`): the simulator passes the trace's (the most frequent
shapes covering 95% of pods, renormalised), the extender the shapes of the pods it saw last, which it keeps
learning. What depends on the workload is worked out again only when the workload's version moves. A one-GPU
pod's scores per node are kept by the ledger's row version (a :class:`~extender.core.rows.RowMemo`), so only
nodes that changed since are computed again.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..resources import model_matches
from ..rows import RowMemo
from ..workload import Workload, as_workload
from .base import Need, Policy, Take, View


class Fgd(Policy):
    name = "fgd"

    def __init__(self, workload: Workload | Sequence[Sequence] | None = None) -> None:
        try:
            self._source = as_workload(workload)
        except ValueError as exc:
            raise ValueError(f"fgd {exc}") from None
        self._version: int | None = None
        self._follow()

    def _follow(self) -> None:
        """Take the workload's current shapes, and drop what was derived from older ones."""
        if self._version == self._source.version:
            return
        rows = self._source.shapes()
        self._version = self._source.version
        self.workload = rows
        self.cpu = np.array([w[0] for w in rows], dtype=np.int64)
        self.count = np.array([w[1] for w in rows], dtype=np.int64)
        self.units = np.array([w[2] for w in rows], dtype=np.int64)
        self.models = [tuple(w[3]) if w[3] else None for w in rows]
        self.p = np.array([w[4] for w in rows], dtype=np.float64)
        # the per-GPU sums depend on a shape's share alone: computed once per distinct share, then spread
        self._shares, self._share_of = np.unique(self.units, return_inverse=True)
        # one-GPU pod shape (units, cpu) -> per-GPU scores, kept by row version (only changed nodes are computed)
        self._one_gpu: dict[tuple[int, int], RowMemo] = {}

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
        self._follow()
        if need.count != 1:  # whole GPUs: lowest index first (the published simulator's exclusive allocation)
            return -view.positions.astype(np.float64)
        return self._single_gpu_scores(view, need)

    def node_score(self, view: View, need: Need, take: Take) -> np.ndarray:
        self._follow()
        if need.count == 1 and need.units > 0:
            scores = self._single_gpu_scores(view, need)
            return np.where(take.charged, scores, -np.inf).max(axis=1).clip(0.0, None)
        return _score(self._decrease(view, need, take), view.units_per_gpu)

    def _decrease(self, view: View, need: Need, take: Take) -> np.ndarray:
        """Per node, F before the pod less F after it (any pod but one on a single GPU)."""
        access = self.shape_access(view)
        cpu = view.cpu_room  # unlimited where the core does not account CPU
        before = self.fragmentation(view.free_units, cpu, access)
        after = self.fragmentation(view.free_units - take.units, cpu - need.cpu_milli, access)
        return before - after

    def _single_gpu_scores(self, view: View, need: Need) -> np.ndarray:
        """(nodes, GPUs): the score of putting this one-GPU pod on each GPU, kept per row version (and per
        view: gpu_preference and node_score of one evaluation ask for the same)."""
        memo_key = (id(self), self._version, need.units, need.cpu_milli)
        known = view.memo.get(memo_key)
        if known is None:
            key = (need.units, need.cpu_milli)
            memo = self._one_gpu.get(key)
            if memo is None:
                memo = self._one_gpu[key] = RowMemo(lambda ledger, rows: self._one_gpu_rows(ledger, rows, *key))
            known = view.memo[memo_key] = memo.refresh(view.ledger, view.rows).take(view.rows, axis=0)
        return known

    def _one_gpu_rows(self, ledger, rows: np.ndarray, units: int, cpu_milli: int) -> np.ndarray:
        sub = View(ledger, rows)
        decrease = self._one_gpu_decrease(sub, units, cpu_milli)
        return np.where(sub.free_units >= units, _score(decrease, ledger.units_per_gpu), -np.inf)

    def _one_gpu_decrease(self, sub: View, units: int, cpu_milli: int) -> np.ndarray:
        """(nodes, GPUs): F before less F after a pod of ``units`` on that one GPU with ``cpu_milli`` CPU."""
        before, after = self.fragmentation_after_one(sub.free_units, sub.cpu_room, self.shape_access(sub), units,
                                                     cpu_milli)
        return before[:, None] - after


def _score(decrease: np.ndarray, units_per_gpu: int) -> np.ndarray:
    """floor(100 · sigmoid(ΔF / unitsPerGpu)) / 10: the published integer score on a 0..10 scale."""
    return np.floor(100.0 / (1.0 + np.exp(-decrease / units_per_gpu))) / 10.0
