"""A node's GPUs, read from its ``fracgpu.io/gpus`` annotation or, failing that, from GFD labels.

The annotation is written by the node agent (docs/design.md, "Inventory"); its schema is pinned here with pydantic
so that a corrupt annotation is answered with the field that is wrong, and the node is excluded with that
reason instead of crashing the extender.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import CorruptAnnotation
from .limits import MAX_GPU_INDEX, MAX_GPU_MEMORY_MIB, MAX_GPUS_PER_NODE, MAX_NUMA_NODE, MAX_UNITS_PER_GPU
from .quantity import whole_number
from .settings import (
    GFD_COUNT_LABEL,
    GFD_MEMORY_LABEL,
    GFD_PRODUCT_LABEL,
    GPUS_ANNOTATION,
    CoreSettings,
)

INVENTORY_VERSION = 1

# Link codes between two GPUs, as `nvidia-smi topo -m` names them, worst first; NV<n> is NVLink with n links.
_LINK_RANK = {"SYS": 1, "NODE": 2, "PHB": 3, "PXB": 4, "PIX": 5}
_NVLINK = re.compile(r"^NV([1-9][0-9]*)$")


def link_weight(code: str) -> int:
    """Bandwidth rank of a link code: SYS 1 < NODE 2 < PHB 3 < PXB 4 < PIX 5 < NV1 11 < NV2 12 < ..."""
    match = _NVLINK.match(code)
    if match:
        return 10 + int(match.group(1))
    try:
        return _LINK_RANK[code]
    except KeyError:
        raise ValueError(f"unknown link code {code!r} (expected NV<n>, PIX, PXB, PHB, NODE or SYS)") from None


class GpuRecord(BaseModel):
    """One GPU as the agent publishes it."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    index: int = Field(ge=0, le=MAX_GPU_INDEX)
    uuid: str | None = None
    model: str = "unknown"
    memory_mib: int = Field(alias="memoryMiB", gt=0, le=MAX_GPU_MEMORY_MIB)
    used_memory_mib: int = Field(default=0, alias="usedMemoryMiB", ge=0, le=MAX_GPU_MEMORY_MIB)
    healthy: bool = True
    numa_node: int | None = Field(default=None, alias="numaNode", ge=-1, le=MAX_NUMA_NODE)
    mig: bool = False


class InventoryRecord(BaseModel):
    """The whole ``fracgpu.io/gpus`` annotation (schema version 1)."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    version: Literal[1]
    units_per_gpu: int = Field(alias="unitsPerGpu", gt=0, le=MAX_UNITS_PER_GPU)
    gpus: list[GpuRecord] = Field(max_length=MAX_GPUS_PER_NODE)
    links: list[list[str]] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "InventoryRecord":
        indexes = [g.index for g in self.gpus]
        if len(set(indexes)) != len(indexes):
            raise ValueError(f"GPU indexes must be unique, got {indexes}")
        uuids = [g.uuid for g in self.gpus if g.uuid]
        if len(set(uuids)) != len(uuids):
            raise ValueError("GPU uuids must be unique")
        if self.links is not None:
            n = len(self.gpus)
            if len(self.links) != n or any(len(row) != n for row in self.links):
                raise ValueError(f"links must be a {n}x{n} matrix (one row and column per GPU, in gpus order)")
            for i in range(n):
                for j in range(n):
                    code = self.links[i][j]
                    if i == j:
                        continue
                    link_weight(code)
                    if self.links[j][i] != code:
                        raise ValueError(f"links must be symmetric: [{i}][{j}]={code!r} but [{j}][{i}]={self.links[j][i]!r}")
        return self


@dataclass(frozen=True, slots=True)
class GpuInfo:
    index: int
    uuid: str | None
    model: str
    memory_mib: int
    used_memory_mib: int
    healthy: bool
    numa_node: int | None
    mig: bool

    @property
    def offered(self) -> bool:
        """Healthy and not MIG-partitioned: a GPU fracgpu may hand out."""
        return self.healthy and not self.mig


@dataclass(frozen=True, slots=True)
class NodeInventory:
    """A node's GPUs, sorted by index. ``links[i][j]`` is the link code between ``gpus[i]`` and ``gpus[j]``."""

    name: str
    pool: str | None
    gpus: tuple[GpuInfo, ...]
    links: tuple[tuple[str, ...], ...] | None
    source: Literal["annotation", "gfd", "simulator"]
    # Host resources, accounted only where known (the simulator). The extender leaves them to kube-scheduler.
    cpu_milli: int | None = None
    memory_mib: int | None = None


def parse_node(node: Mapping, settings: CoreSettings) -> NodeInventory | None:
    """Read a Node dict. ``None`` when the node has no GPU information at all (not a GPU node).

    Raises :class:`CorruptAnnotation` when the annotation or the GFD labels are present but wrong.
    """
    if not isinstance(node, Mapping):
        raise CorruptAnnotation(GPUS_ANNOTATION, "node", f"a node must be an object, got {type(node).__name__}")
    metadata = node.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        raise CorruptAnnotation(GPUS_ANNOTATION, "node", "metadata.name is missing")
    owner = f"node {name}"
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    if not isinstance(labels, Mapping) or not isinstance(annotations, Mapping):
        raise CorruptAnnotation(GPUS_ANNOTATION, owner, "metadata.labels and metadata.annotations must be objects")
    pool = labels.get(settings.pool_label) or None if settings.pools_enabled else None
    raw = annotations.get(GPUS_ANNOTATION)
    if raw is not None:
        return _from_annotation(name, pool, raw, settings)
    if GFD_COUNT_LABEL in labels:
        return _from_gfd(name, pool, labels)
    return None


def parse_inventory(raw: object, owner: str) -> InventoryRecord:
    """Validate an annotation value (JSON text) against the schema; errors name the field."""
    if not isinstance(raw, str):
        raise CorruptAnnotation(GPUS_ANNOTATION, owner, f"must be a JSON string, got {type(raw).__name__}")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CorruptAnnotation(GPUS_ANNOTATION, owner, f"is not JSON: {exc}") from None
    try:
        return InventoryRecord.model_validate(data)
    except ValidationError as exc:
        raise CorruptAnnotation(GPUS_ANNOTATION, owner, _first_errors(exc)) from None


def _from_annotation(name: str, pool: str | None, raw: object, settings: CoreSettings) -> NodeInventory:
    owner = f"node {name}"
    record = parse_inventory(raw, owner)
    if record.units_per_gpu != settings.units_per_gpu:
        raise CorruptAnnotation(
            GPUS_ANNOTATION,
            owner,
            f"publishes unitsPerGpu={record.units_per_gpu} but the extender is configured with "
            f"unitsPerGpu={settings.units_per_gpu}; configure both the same",
        )
    order = sorted(range(len(record.gpus)), key=lambda i: record.gpus[i].index)
    gpus = tuple(
        GpuInfo(
            index=g.index, uuid=g.uuid, model=g.model, memory_mib=g.memory_mib,
            used_memory_mib=g.used_memory_mib, healthy=g.healthy, numa_node=g.numa_node, mig=g.mig,
        )
        for g in (record.gpus[i] for i in order)
    )
    links = None
    if record.links is not None:
        links = tuple(tuple("X" if i == j else record.links[i][j] for j in order) for i in order)
    return NodeInventory(name=name, pool=pool, gpus=gpus, links=links, source="annotation")


def _from_gfd(name: str, pool: str | None, labels: Mapping) -> NodeInventory:
    owner = f"node {name}"
    values = {}
    for label, maximum, what in ((GFD_COUNT_LABEL, MAX_GPUS_PER_NODE, "GPUs"),
                                 (GFD_MEMORY_LABEL, MAX_GPU_MEMORY_MIB, "MiB")):
        try:
            values[label] = whole_number(labels.get(label), maximum=maximum, what=what)
        except ValueError as exc:
            raise CorruptAnnotation(label, owner, f"label {exc}") from None
    model = labels.get(GFD_PRODUCT_LABEL) or "unknown"
    gpus = tuple(
        GpuInfo(index=i, uuid=None, model=str(model), memory_mib=values[GFD_MEMORY_LABEL], used_memory_mib=0,
                healthy=True, numa_node=None, mig=False)
        for i in range(values[GFD_COUNT_LABEL])
    )
    return NodeInventory(name=name, pool=pool, gpus=gpus, links=None, source="gfd")


def _first_errors(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def inventory_annotation(
    *, units_per_gpu: int, gpus: list[Mapping], links: list[list[str]] | None = None
) -> str:
    """Serialise an inventory the way the agent publishes it (validated, so what we write we can read)."""
    record = InventoryRecord.model_validate(
        {"version": INVENTORY_VERSION, "unitsPerGpu": units_per_gpu, "gpus": list(gpus), "links": links}
    )
    return record.model_dump_json(by_alias=True, exclude_none=True)
