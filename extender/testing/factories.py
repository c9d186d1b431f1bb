"""Kubernetes-shaped Node and Pod dicts, built the way the agent and users write them."""

from __future__ import annotations

from typing import Mapping, Sequence

from ..core.inventory import inventory_annotation
from ..core.settings import (
    GPU_COUNT_ANNOTATION,
    GPU_MODEL_ANNOTATION,
    GPUS_ANNOTATION,
    POOL_LABEL,
    CoreSettings,
)


def gpu_node(
    name: str,
    *,
    gpus: int = 8,
    memory_mib: int = 81_920,
    model: str = "NVIDIA H100 80GB HBM3",
    pool: str | None = None,
    units_per_gpu: int = 100,
    links: Sequence[Sequence[str]] | None = None,
    unhealthy: Sequence[int] = (),
    mig: Sequence[int] = (),
    used_memory_mib: Mapping[int, int] | None = None,
) -> dict:
    """A Node whose agent published ``gpus`` identical GPUs (UUIDs derived from the node name)."""
    records = [
        {
            "index": i, "uuid": f"GPU-{name}-{i}", "model": model, "memoryMiB": memory_mib,
            "usedMemoryMiB": (used_memory_mib or {}).get(i, 0), "healthy": i not in unhealthy, "mig": i in mig,
        }
        for i in range(gpus)
    ]
    labels = {POOL_LABEL: pool} if pool else {}
    annotation = inventory_annotation(
        units_per_gpu=units_per_gpu, gpus=records, links=[list(r) for r in links] if links is not None else None
    )
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {GPUS_ANNOTATION: annotation}},
    }


def gpu_pod(
    name: str,
    *,
    units: int | str | None = None,
    memory_mib: int | str | None = None,
    gpu_count: int | str | None = None,
    models: str | None = None,
    pool: str | None = None,
    namespace: str = "default",
    uid: str | None = None,
    settings: CoreSettings | None = None,
    extra_containers: Sequence[Mapping] = (),
    init_containers: Sequence[Mapping] = (),
) -> dict:
    """A Pod with one container asking for ``units`` (and ``memory_mib``) of the fracgpu resources."""
    settings = settings or CoreSettings()
    annotations = {}
    if gpu_count is not None:
        annotations[GPU_COUNT_ANNOTATION] = str(gpu_count)
    if models is not None:
        annotations[GPU_MODEL_ANNOTATION] = models
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace, "uid": uid or f"uid-{namespace}-{name}",
            "labels": {POOL_LABEL: pool} if pool else {}, "annotations": annotations,
        },
        "spec": {
            "initContainers": list(init_containers),
            "containers": [container("main", units=units, memory_mib=memory_mib, settings=settings),
                           *extra_containers],
        },
    }


def container(
    name: str, *, units: int | str | None = None, memory_mib: int | str | None = None,
    settings: CoreSettings | None = None, sidecar: bool = False,
) -> dict:
    settings = settings or CoreSettings()
    limits = {}
    if units is not None:
        limits[settings.vgpu_resource] = str(units)
    if memory_mib is not None:
        limits[settings.memory_resource] = str(memory_mib)
    out: dict = {"name": name, "image": "registry.example/inference:1", "resources": {"limits": limits}}
    if sidecar:
        out["restartPolicy"] = "Always"
    return out
