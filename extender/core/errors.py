"""Faults the core raises, each carrying a message a person can act on.

"Does not fit" is not an exception (see :mod:`extender.core.evaluation`, which returns a ``Misfit`` value);
these are for input that is wrong: a malformed pod, a corrupt annotation, an impossible ledger operation.
"""

from __future__ import annotations


class FracGpuError(Exception):
    """Base of every error the core raises on purpose."""


class InvalidRequest(FracGpuError, ValueError):
    """A pod asks for GPUs in a way that can never be valid. The message names the field and the rule."""

    def __init__(self, field: str, rule: str, *, pod: str | None = None) -> None:
        self.field = field
        self.rule = rule
        self.pod = pod
        where = f"pod {pod}: " if pod else ""
        super().__init__(f"{where}{field}: {rule}")


class CorruptAnnotation(FracGpuError, ValueError):
    """An annotation fracgpu reads (node inventory, pod assignment) does not parse or violates its schema."""

    def __init__(self, key: str, owner: str, problem: str) -> None:
        self.key = key
        self.owner = owner
        self.problem = problem
        super().__init__(f"{owner}: annotation {key}: {problem}")


class LedgerConflict(FracGpuError):
    """A ledger operation would break an invariant (over-commit, double reservation, unknown pod)."""
