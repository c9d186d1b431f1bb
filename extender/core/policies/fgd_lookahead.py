"""fgd-lookahead: FGD whose fragmentation looks ahead at what the target workload will make of what is left.

FGD (:mod:`.fgd`) counts a GPU with ``g`` free units as stranded for every shape that asks for more than ``g``:
``g · P(share > g)``, the waste if no other pod ever came. Replayed on the openb traces, two things decide what
is really left when the cluster is full, and FGD sees neither:

1. **Most gaps are filled later; a few never are.** A GPU left with 530 free units is stranded for two shapes
   in three by FGD's count, yet a 470-unit pod (one pod in ten) nearly always comes and fills it. A gap that only
   rare shapes fit (190 units, left by every 810-unit pod) stays: the few small pods cannot fill the many such
   gaps. So a gap is charged its expected *final* waste ``V(g)``, worked out once per workload over the
   one-GPU shared shapes ``s`` (probability ``p_s``, share ``u_s``)::

       M(g) = Σ_{u_s ≤ g} p_s                       the shapes that fit the gap
       V(0) = 0;   V(g) = g                         if M(g) < theta · M(units per GPU): only rare shapes fit
       V(g) = (1 − b) · g + b · Σ_{u_s ≤ g} p_s / M(g) · V(g − u_s),   b = M(g) / (M(g) + tau)   otherwise

   and each GPU's term of F changes from ``g · P(share > g)`` to ``V(g)``.
2. **Host CPU strands GPUs before it runs out.** A node whose free CPU cannot feed its free GPUs at the
   workload's CPU per GPU unit ``c`` will leave ``max(0, free units − free CPU / c)`` units without a pod;
   placing a CPU-heavy pod there, or a pod with no GPU at all, costs those units. F gains
   ``lam ·`` that count (nothing where the core does not account CPU: the extender's nodes).

The score is FGD's, on the change of this F: ``floor(100 · sigmoid(ΔF / unitsPerGpu)) / 10``, ties to the first
node as FGD's. ``tau``, ``theta`` and ``lam`` were measured on the openb default trace (``docs/simulator/
beating-fgd.md`` has every variant tried); the workload is FGD's, the trace's in the simulator and the recent
pods' in the extender.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..workload import Workload
from .base import View
from .fgd import Fgd


class FgdLookahead(Fgd):
    name = "fgd-lookahead"

    def __init__(self, workload: Workload | Sequence[Sequence] | None = None, tau: float = 0.003,
                 theta: float = 0.05, lam: float = 2.0) -> None:
        self.tau, self.theta, self.lam = (_non_negative(key, value) for key, value in
                                          (("tau", tau), ("theta", theta), ("lam", lam)))
        self._corrections: dict[int, np.ndarray] = {}
        super().__init__(workload)

    def describe(self) -> str:
        return f"fgd-lookahead({len(self.workload)} shapes, tau={self.tau}, theta={self.theta}, lam={self.lam})"

    def _follow(self) -> None:
        version = self._version
        super()._follow()
        if self._version != version:
            self._corrections = {}
            volume = self.count * self.units
            gpu = volume > 0
            demand = float((self.p[gpu] * volume[gpu]).sum())
            self.cpu_per_unit = float((self.p[gpu] * self.cpu[gpu]).sum()) / demand if demand else 0.0

    # ------------------------------------------------------------------ the two looks ahead
    def correction(self, units_per_gpu: int) -> np.ndarray:
        """``V(g) − g · P(share > g)`` for g = 0..units_per_gpu (0 at both ends): what each GPU's term of F
        changes by. Worked out once per workload version and GPU size."""
        table = self._corrections.get(units_per_gpu)
        if table is None:
            table = self._corrections[units_per_gpu] = self._final_waste(units_per_gpu) - self._stranded(units_per_gpu)
            table[0] = table[units_per_gpu] = 0.0
        return table

    def _final_waste(self, size: int) -> np.ndarray:
        """V(g), g = 0..size (the module's formula)."""
        shared = (self.count == 1) & (self.units > 0) & (self.units < size)
        shares, p = self.units[shared], self.p[shared]
        final = np.arange(size + 1, dtype=np.float64)  # V(g) = g where nothing common fits
        rare = self.theta * p.sum()
        for gap in range(1, size + 1):
            fits = shares <= gap
            mass = p[fits].sum()
            if mass > 0 and mass >= rare:
                filled = mass / (mass + self.tau)
                final[gap] = (1 - filled) * gap + filled * (p[fits] * final[gap - shares[fits]]).sum() / mass
        return final

    def _stranded(self, size: int) -> np.ndarray:
        """g · P(share > g), g = 0..size: a GPU's term of FGD's F when every shape may run on its node."""
        gaps = np.arange(size + 1)
        asks_more = (self.units[None, :] > gaps[:, None]) & (self.units > 0)
        return gaps * (asks_more * self.p).sum(axis=1)

    def _cpu_stranded(self, free_units: np.ndarray, cpu_free: np.ndarray) -> np.ndarray:
        """Units the node's free CPU cannot feed at the workload's CPU per GPU unit (0 where CPU is not
        accounted: the room is then ``UNLIMITED``)."""
        if not self.cpu_per_unit:
            return np.zeros(np.shape(free_units))
        return np.maximum(0.0, free_units - cpu_free / self.cpu_per_unit)

    # ------------------------------------------------------------------ FGD's decrease, plus the looks ahead
    def _one_gpu_decrease(self, sub: View, units: int, cpu_milli: int) -> np.ndarray:
        decrease = super()._one_gpu_decrease(sub, units, cpu_milli)
        size = sub.units_per_gpu
        table = self.correction(size)
        free = np.clip(sub.free_units, 0, size)
        decrease -= table[np.clip(free - units, 0, size)] - table[free]
        total, cpu = free.sum(axis=1), sub.cpu_room.astype(np.float64)
        cpu_before, cpu_after = self._cpu_stranded(total, cpu), self._cpu_stranded(total - units, cpu - cpu_milli)
        return decrease + self.lam * (cpu_before - cpu_after)[:, None]

    def _decrease(self, view: View, need, take) -> np.ndarray:
        decrease = super()._decrease(view, need, take)
        size = view.units_per_gpu
        table = self.correction(size)
        free = np.clip(view.free_units, 0, size)
        decrease -= (table[np.clip(free - take.units, 0, size)] - table[free]).sum(axis=1)
        total, cpu = free.sum(axis=1), view.cpu_room.astype(np.float64)
        cpu_before = self._cpu_stranded(total, cpu)
        cpu_after = self._cpu_stranded(total - take.units_sum, cpu - need.cpu_milli)
        return decrease + self.lam * (cpu_before - cpu_after)


def _non_negative(key: str, value: object) -> float:
    """A parameter as a float (the simulator's ``fgd-lookahead:tau=0.01`` gives text); ValueError naming it."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if not (number >= 0 and math.isfinite(number)):
        raise ValueError(f"fgd-lookahead: {key} must be a finite number >= 0, not {value!r}")
    return number
