"""GPU-clustering (the FGD paper's GpuClustering): keep pods of the same kind together.

A node's "affinity" is the set of kinds of the pods on it. ``affinity`` names what a kind is:

* ``"share"`` (default, the extender's, :class:`ByShare`): the per-GPU unit share (50 units and 25 units are
  two kinds);
* ``"kind"`` (:class:`ByKind`): the paper's simulator: every pod that shares a GPU is one kind, and a pod of n
  whole GPUs is kind "n-gpu".

Four bands, each 2.5 wide, and within a band the fuller node wins (scaled by the largest node in the cluster):

    base = 2.5 * (max node units - free units on node) / max node units
    pod's kind present and the only one: base + 7.5     present among others: base + 5
    node empty:                          base + 2.5     only other kinds:     base
    e.g. max 800 units, node with 500 free holding only 50-unit pods, ask 50: 2.5 * 300/800 + 7.5 = 8.4375

GPU preference: ``"share"``: GPUs holding only the same share first, then the fewest free units; ``"kind"``:
the fewest free units (the paper's "best" GPU selection). A pod without GPUs scores 0 everywhere under
``"kind"``, as in the paper.

The kinds on each node are counted from the ledger's pods on it and kept by row version
(:class:`~extender.core.rows.RowMemo`), so only nodes that changed are counted again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..rows import RowMemo
from .base import Need, Policy, Take, View, named, ratio

if TYPE_CHECKING:
    from ..ledger import Ledger

KIND_SLOTS = 17  # ByKind's counts: 0 = pods sharing a GPU, n = pods of n whole GPUs (16: 16 or more)


class ByShare:
    """Kinds are share sizes. Per node, how many GPU shares of each size it holds (kept size by size, across the
    nodes, so that one size for the candidates is one take) and how many sizes; per GPU, the one share size of its
    pods (0 without pods, -1 for mixed sizes)."""

    def __init__(self) -> None:
        self.memo = RowMemo(self._count, by_column=("sizes",))

    @staticmethod
    def _count(ledger: "Ledger", rows: np.ndarray) -> dict[str, np.ndarray]:
        """Counted in Python lists: a node holds a few dozen shares."""
        upg, width = ledger.units_per_gpu, ledger.free_units.shape[1]
        sizes = np.zeros((len(rows), upg + 1), dtype=np.int32)
        gpu_share = np.zeros((len(rows), width), dtype=np.int32)
        for r, row in enumerate(rows.tolist()):
            counts, shares = [0] * (upg + 1), [0] * width
            for pod in ledger.charges_at(row):
                for pos, share in pod:
                    counts[min(share.units, upg)] += 1
                    shares[pos] = share.units if shares[pos] in (0, share.units) else -1
            sizes[r], gpu_share[r] = counts, shares
        return {"sizes": sizes, "kinds": np.count_nonzero(sizes, axis=1), "gpu_share": gpu_share}

    def gpu_preference(self, view: View, need: Need, fullness: np.ndarray) -> np.ndarray:
        same = self.memo.refresh(view.ledger, view.rows)["gpu_share"].take(view.rows, axis=0) == need.units
        return same.astype(np.float64) * 2.0 + fullness

    def present_and_kinds(self, view: View, need: Need) -> tuple[np.ndarray, np.ndarray] | None:
        counts = self.memo.refresh(view.ledger, view.rows)
        return counts["sizes"][need.units].take(view.rows) > 0, counts["kinds"].take(view.rows)


class ByKind:
    """Kinds as the paper counts them: any GPU-sharing pod is kind 0, a pod of n whole GPUs kind n."""

    def __init__(self) -> None:
        self.memo = RowMemo(self._count_kinds)

    @staticmethod
    def _count_kinds(ledger: "Ledger", rows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rows), KIND_SLOTS), dtype=np.int32)
        for r, row in enumerate(rows.tolist()):
            for pod in ledger.charges_at(row):
                if pod:
                    out[r, pod_kind([share.units for _, share in pod], ledger.units_per_gpu)] += 1
        return out

    def gpu_preference(self, view: View, need: Need, fullness: np.ndarray) -> np.ndarray:
        return fullness

    def present_and_kinds(self, view: View, need: Need) -> tuple[np.ndarray, np.ndarray] | None:
        if need.count == 0:
            return None  # a pod without GPUs: 0 everywhere, as in the paper
        counts = self.memo.refresh(view.ledger, view.rows)[view.rows]
        kind = pod_kind([need.units] * need.count, view.units_per_gpu)
        return counts[:, kind] > 0, np.count_nonzero(counts, axis=1)


def pod_kind(units: list[int], units_per_gpu: int) -> int:
    """A GPU pod's kind, from the units of each of its GPUs: 0 = shares a GPU, n = n whole GPUs (the last slot
    takes more)."""
    if min(units) < units_per_gpu:
        return 0
    return min(len(units), KIND_SLOTS - 1)


AFFINITIES = {"share": ByShare, "kind": ByKind}


class GpuClustering(Policy):
    name = "gpu-clustering"

    def __init__(self, affinity: str = "share") -> None:
        self.affinity = affinity
        self._kinds = named(AFFINITIES, affinity, policy=self.name, parameter="affinity")()

    def warm(self, ledger: "Ledger") -> None:
        """Count the kinds on every node now (about 46 us a node of 20 pods), not in the first Filters."""
        self._kinds.memo.warm(ledger)

    def gpu_preference(self, view: View, need: Need, memory: np.ndarray) -> np.ndarray:
        fullness = -ratio(np.maximum(view.free_units, 0), view.units_per_gpu)
        return self._kinds.gpu_preference(view, need, fullness)

    def node_score(self, view: View, need: Need, take: Take) -> np.ndarray:
        found = self._kinds.present_and_kinds(view, need)
        if found is None:
            return np.zeros(len(view))
        present, kinds = found
        max_units, _ = view.ledger.max_node_capacity()
        base = np.clip(2.5 * ratio(max_units - view.free_units_sum, max_units), 0.0, 2.5)
        band = np.where(present, np.where(kinds == 1, 7.5, 5.0), np.where(kinds == 0, 2.5, 0.0))
        return base + band
