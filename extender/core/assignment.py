"""Which GPUs a pod holds: the ``fracgpu.io/assignment`` annotation and its in-memory form.

The annotation is the source of truth the ledger is rebuilt from after a restart (docs/design.md invariant 4), so
it carries everything needed to charge the pod again: per container its kind (init / sidecar / app, in
declaration order, from which the phases follow) and its GPU shares. It also names the pod's UID, so an
annotation copied onto another pod (a template, a ``kubectl get -o yaml | kubectl apply``) is recognised as
not belonging to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import CorruptAnnotation
from .limits import MAX_GPU_INDEX, MAX_GPU_MEMORY_MIB, MAX_UNITS_PER_GPU
from .resources import ContainerKind, phases_of
from .settings import ASSIGNMENT_ANNOTATION

ASSIGNMENT_VERSION = 1


@dataclass(frozen=True, slots=True)
class GpuShare:
    index: int
    uuid: str | None
    units: int
    memory_mib: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerAssignment:
    name: str
    kind: ContainerKind
    gpus: tuple[GpuShare, ...]


@dataclass(frozen=True, slots=True, kw_only=True)  # several adjacent strings: keywords keep them apart
class Assignment:
    """A pod's GPUs on one node. ``charges()`` is what the ledger accounts for it."""

    pod_uid: str
    namespace: str
    name: str
    node: str
    pool: str | None
    policy: str
    containers: tuple[ContainerAssignment, ...]
    cpu_milli: int = 0   # host charge (simulator); not part of the annotation
    memory_mib: int = 0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def charges(self) -> dict[int, tuple[int, int]]:
        """Per GPU index: (units, MiB) the ledger charges for this pod (:func:`phase_charges`)."""
        return phase_charges(self.containers)


def phase_charges(containers: tuple[ContainerAssignment, ...]) -> dict[int, tuple[int, int]]:
    """Per GPU index, (units, MiB) charged: per resource, the maximum over the pod's phases of the sum of the
    shares of the containers running in that phase (the Kubernetes effective-request rule), by index."""
    charged: dict[int, tuple[int, int]] = {}
    for phase in phases_of(tuple(c.kind for c in containers)):
        sums: dict[int, list[int]] = {}
        for position in phase:
            for share in containers[position].gpus:
                acc = sums.setdefault(share.index, [0, 0])
                acc[0] += share.units
                acc[1] += share.memory_mib
        for index, (units, memory) in sums.items():
            old_units, old_memory = charged.get(index, (0, 0))
            charged[index] = (max(old_units, units), max(old_memory, memory))
    return dict(sorted(charged.items()))


class _Share(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    uuid: str | None = None
    index: int = Field(ge=0, le=MAX_GPU_INDEX)
    units: int = Field(ge=0, le=MAX_UNITS_PER_GPU)
    memory_mib: int = Field(alias="memoryMiB", ge=0, le=MAX_GPU_MEMORY_MIB)


class _Container(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    kind: Literal["init", "sidecar", "app"] = "app"
    gpus: list[_Share]

    @model_validator(mode="after")
    def _distinct(self) -> "_Container":
        indexes = [s.index for s in self.gpus]
        if len(set(indexes)) != len(indexes):
            raise ValueError(f"a container's GPUs must be distinct, got indexes {indexes}")
        return self


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)
    version: Literal[1]
    pod_uid: str = Field(alias="podUID")
    node: str
    pool: str | None = None
    policy: str
    timestamp: str | None = None
    containers: list[_Container] = Field(min_length=1)


def to_annotation(assignment: Assignment, *, timestamp: str | None = None) -> str:
    """Serialise for the Binding. The timestamp is passed in by the caller: the core reads no clock."""
    record = {
        "version": ASSIGNMENT_VERSION,
        "podUID": assignment.pod_uid,
        "node": assignment.node,
        "pool": assignment.pool,
        "policy": assignment.policy,
        "timestamp": timestamp,
        "containers": [
            {
                "name": c.name,
                "kind": c.kind,
                "gpus": [
                    {"uuid": s.uuid, "index": s.index, "units": s.units, "memoryMiB": s.memory_mib} for s in c.gpus
                ],
            }
            for c in assignment.containers
        ],
    }
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def from_annotation(raw: object, *, pod_uid: str, namespace: str, name: str) -> Assignment:
    """Parse a pod's assignment annotation; it must belong to this pod (same UID)."""
    owner = f"pod {namespace}/{name}"
    if not isinstance(raw, str):
        raise CorruptAnnotation(ASSIGNMENT_ANNOTATION, owner, f"must be a JSON string, got {type(raw).__name__}")
    try:
        record = _Record.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise CorruptAnnotation(ASSIGNMENT_ANNOTATION, owner, f"is not JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise CorruptAnnotation(ASSIGNMENT_ANNOTATION, owner, f"{where}: {first['msg']}") from None
    if pod_uid and record.pod_uid != pod_uid:
        raise CorruptAnnotation(
            ASSIGNMENT_ANNOTATION, owner, f"belongs to pod UID {record.pod_uid}, not this pod ({pod_uid}): copied?"
        )
    return Assignment(
        pod_uid=record.pod_uid,
        namespace=namespace,
        name=name,
        node=record.node,
        pool=record.pool,
        policy=record.policy,
        containers=tuple(
            ContainerAssignment(
                name=c.name,
                kind=c.kind,
                gpus=tuple(GpuShare(index=s.index, uuid=s.uuid, units=s.units, memory_mib=s.memory_mib) for s in c.gpus),
            )
            for c in record.containers
        ),
    )
