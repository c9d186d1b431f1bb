"""The hand-off: what each container of a bound pod is told about its GPUs, derived from the pod's own assignment.

The Binding that sets ``spec.nodeName`` also carries, per GPU container, flat annotations (the API server writes
them with the node, atomically, guarded by the pod's UID)::

    <container>.containers.fracgpu.io/visible-devices   GPU-…,GPU-…   (the assignment's order)
    <container>.containers.fracgpu.io/units             40,40          (units on each of those GPUs)
    <container>.containers.fracgpu.io/memory-mib        10000,10000    (MiB on each)

A container name is a DNS label, so ``<container>.containers.fracgpu.io`` is always a valid annotation prefix.
Admission at pod creation gives each container environment variables that read these through the downward
API (:func:`env_for`); kubelet resolves them when it creates the container, after the binding, so what a
container sees can only come from its own pod's assignment: nothing is matched by request size or by order.
"""

from __future__ import annotations

from .assignment import Assignment

DOMAIN = "containers.fracgpu.io"
FIELDS = {  # environment variable -> annotation name under <container>.containers.fracgpu.io/
    "NVIDIA_VISIBLE_DEVICES": "visible-devices",
    "FRACGPU_GPU_UNITS": "units",
    "FRACGPU_GPU_MEMORY_MIB": "memory-mib",
}
NO_GPU = "void"  # NVIDIA_VISIBLE_DEVICES for a container without GPUs: the toolkit then exposes none


def annotation_key(container: str, field: str) -> str:
    return f"{container}.{DOMAIN}/{field}"


def handoff_annotations(assignment: Assignment) -> dict[str, str]:
    """The hand-off annotations of every GPU container of an assignment."""
    out: dict[str, str] = {}
    for container in assignment.containers:
        values = {
            "visible-devices": ",".join(share.uuid or str(share.index) for share in container.gpus),  # GFD: no UUID
            "units": ",".join(str(share.units) for share in container.gpus),
            "memory-mib": ",".join(str(share.memory_mib) for share in container.gpus),
        }
        for field, value in values.items():
            out[annotation_key(container.name, field)] = value
    return out


def env_for(container: str) -> list[dict]:
    """The environment entries (Kubernetes ``EnvVar`` dicts) that hand a GPU container its share."""
    return [{"name": variable, "valueFrom": {"fieldRef": {
                "fieldPath": f"metadata.annotations['{annotation_key(container, field)}']"}}}
            for variable, field in FIELDS.items()]
