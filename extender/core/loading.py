"""Build a ledger from Kubernetes objects: Node dicts and Pod dicts, as the API server or a file holds them.

Used at start (list), by static mode and by the simulator. A pod holds GPUs when it is bound
(``spec.nodeName``), carries a valid ``fracgpu.io/assignment`` for that node, and has not terminated
(``Succeeded``/``Failed`` pods have released their devices). A terminating pod (``deletionTimestamp`` set)
still holds them until it is gone. Anything that cannot be read becomes a warning naming the object and the
problem; one bad object never stops the rest from loading.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

from .assignment import Assignment, from_annotation
from .errors import CorruptAnnotation, InvalidRequest
from .inventory import parse_node
from .ledger import Ledger
from .resources import parse_pod
from .settings import ASSIGNMENT_ANNOTATION, CoreSettings

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass
class LoadReport:
    nodes: int = 0
    pods: int = 0
    warnings: list[str] = field(default_factory=list)


def pod_assignment(pod: Mapping, settings: CoreSettings) -> Assignment | None:
    """The assignment a pod holds right now, or None. Raises CorruptAnnotation for a bad annotation, or for one
    that does not match what the pod itself asks for (see :func:`check_matches_request`)."""
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    raw = annotations.get(ASSIGNMENT_ANNOTATION)
    if raw is None:
        return None
    if (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
        return None
    node = (pod.get("spec") or {}).get("nodeName")
    namespace = metadata.get("namespace") or "default"
    name = metadata.get("name") or "?"
    assignment = from_annotation(raw, pod_uid=metadata.get("uid") or "", namespace=namespace, name=name)
    if not node:
        return None  # annotated but not bound: a Binding that never landed
    if assignment.node != node:
        raise CorruptAnnotation(
            ASSIGNMENT_ANNOTATION, f"pod {namespace}/{name}",
            f"names node {assignment.node} but the pod is bound to {node}",
        )
    check_matches_request(assignment, pod, settings)
    return assignment


def check_matches_request(assignment: Assignment, pod: Mapping, settings: CoreSettings) -> None:
    """Refuse an assignment that is not what this pod asks for: the extender writes exactly one share per GPU the
    pod's own request names, so anything else was written by someone else (a tenant who may patch pods can
    write an annotation holding every GPU of a node onto a pod that asks for none)."""
    owner = f"pod {assignment.key}"
    try:
        # the pool is not compared (the assignment keeps the one it was placed in), so a pod whose pool the
        # current settings read differently (another --pool-label) is still adopted
        request = parse_pod(pod, replace(settings, pools_enabled=False))
    except InvalidRequest as exc:
        raise CorruptAnnotation(ASSIGNMENT_ANNOTATION, owner, f"the pod's own request is invalid: {exc}") from None
    asked = {c.name: c for c in request.containers}
    held = {c.name: c for c in assignment.containers}
    if set(held) != set(asked):
        raise CorruptAnnotation(
            ASSIGNMENT_ANNOTATION, owner,
            f"holds GPUs for containers {sorted(held) or 'none'} but the pod asks for "
            f"{settings.vgpu_resource} in {sorted(asked) or 'none'}: not written by fracgpu, not adopted")
    for name, container in held.items():
        need = asked[name]
        shares = container.gpus
        wrong = (container.kind != need.kind or len(shares) != need.count
                 or any(s.units != need.units for s in shares)
                 or (need.memory_mib is not None and any(s.memory_mib != need.memory_mib for s in shares)))
        if wrong:
            memory = f"{need.memory_mib} MiB" if need.memory_mib is not None else "a proportional share"
            raise CorruptAnnotation(
                ASSIGNMENT_ANNOTATION, owner,
                f"container {name} holds {len(shares)} GPU(s) with units {[s.units for s in shares]} and MiB "
                f"{[s.memory_mib for s in shares]} ({container.kind}), but asks for {need.count} with "
                f"{need.units} units and {memory} each ({need.kind}): not written by fracgpu, not adopted")


def load_node(ledger: Ledger, node: Mapping, report: LoadReport | None = None) -> None:
    """Add, replace or exclude one node; a corrupt inventory excludes the node with the reason."""
    name = ((node.get("metadata") or {}).get("name") if isinstance(node, Mapping) else None) or "?"
    try:
        inventory = parse_node(node, ledger.settings)
    except CorruptAnnotation as exc:
        ledger.exclude_node(name, str(exc))
        if report is not None:
            report.warnings.append(str(exc))
        return
    if inventory is None:
        ledger.remove_node(name)
        return
    ledger.upsert_node(inventory)
    if report is not None:
        report.nodes += 1


def load_pod(ledger: Ledger, pod: Mapping, report: LoadReport | None = None) -> None:
    """Adopt what a pod holds (or release it when it holds nothing any more)."""
    metadata = pod.get("metadata") or {}
    uid = metadata.get("uid") or ""
    try:
        assignment = pod_assignment(pod, ledger.settings)
    except CorruptAnnotation as exc:
        ledger.release(uid)
        if report is not None:
            report.warnings.append(str(exc))
        return
    if assignment is None:
        # A pod we are binding right now may be seen unbound: the watch can deliver its creation after our
        # reservation. That event is older than the bind; releasing on it would let a second pod take the
        # same room (seen in the 200-pod end-to-end burst). A failed bind releases its own reservation.
        if not ledger.is_reserved(uid):
            ledger.release(uid)
        return
    warning = ledger.adopt(assignment)
    if report is not None:
        report.pods += 1
        if warning:
            report.warnings.append(warning)


def build_ledger(settings: CoreSettings, nodes: Iterable[Mapping], pods: Iterable[Mapping]) -> tuple[Ledger, LoadReport]:
    """A ledger holding these nodes and what these pods hold (invariant 4: equal to the live one)."""
    ledger = Ledger(settings)
    report = LoadReport()
    for node in nodes:
        load_node(ledger, node, report)
    for pod in pods:
        load_pod(ledger, pod, report)
    return ledger, report
