"""The hand-off: what each container of a bound pod is told about its GPUs, derived from the pod's own assignment.

The Binding that sets ``spec.nodeName`` also carries, per GPU container, flat annotations (the API server writes
them with the node, atomically, guarded by the pod's UID)::

    <container>.containers.fracgpu.io/visible-devices   GPU-…,GPU-…   (the assignment's order)
    <container>.containers.fracgpu.io/units             40,40          (units on each of those GPUs)
    <container>.containers.fracgpu.io/memory-mib        10000,10000    (MiB on each)

A pod that asks for MPS (``fracgpu.io/sharing: mps``) also gets, per GPU container, the limits its MPS client
is started with::

    <container>.containers.fracgpu.io/mps-active-thread-percentage   40             (units / unitsPerGpu, in %)
    <container>.containers.fracgpu.io/mps-pinned-device-mem-limit    GPU-…=10000M,GPU-…=10000M

A container name is a DNS label, so ``<container>.containers.fracgpu.io`` is always a valid annotation prefix.
Admission at pod creation gives each container environment variables that read these through the downward
API (:func:`env_for`); kubelet resolves them when it creates the container, after the binding, so what a
container sees can only come from its own pod's assignment: nothing is matched by request size or by order.
"""

from __future__ import annotations

from .assignment import Assignment, ContainerAssignment

DOMAIN = "containers.fracgpu.io"
FIELDS = {  # environment variable -> annotation name under <container>.containers.fracgpu.io/
    "NVIDIA_VISIBLE_DEVICES": "visible-devices",
    "FRACGPU_GPU_UNITS": "units",
    "FRACGPU_GPU_MEMORY_MIB": "memory-mib",
}
MPS_FIELDS = {
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "mps-active-thread-percentage",
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "mps-pinned-device-mem-limit",
}
NO_GPU = "void"  # NVIDIA_VISIBLE_DEVICES for a container without GPUs: the toolkit then exposes none

# MPS on a node: the control daemon (``fracgpu-agent mps``) keeps its pipes and its shared memory under MPS_ROOT on
# the host; an MPS pod's GPU containers mount MPS_PIPES at the same path and MPS_SHM as their /dev/shm.
MPS_ROOT = "/run/fracgpu/mps"
MPS_PIPES = f"{MPS_ROOT}/pipe"
MPS_SHM = f"{MPS_ROOT}/shm"
MPS_LOGS = f"{MPS_ROOT}/log"


def annotation_key(container: str, field: str) -> str:
    return f"{container}.{DOMAIN}/{field}"


def handoff_annotations(assignment: Assignment, *, units_per_gpu: int, mps: bool = False) -> dict[str, str]:
    """The hand-off annotations of every GPU container of an assignment (with its MPS limits for an MPS pod)."""
    out: dict[str, str] = {}
    for container in assignment.containers:
        values = {
            "visible-devices": ",".join(share.uuid or str(share.index) for share in container.gpus),  # GFD: no UUID
            "units": ",".join(str(share.units) for share in container.gpus),
            "memory-mib": ",".join(str(share.memory_mib) for share in container.gpus),
        }
        if mps:
            values.update(mps_limits(container, units_per_gpu))
        for field, value in values.items():
            out[annotation_key(container.name, field)] = value
    return out


def mps_limits(container: ContainerAssignment, units_per_gpu: int) -> dict[str, str]:
    """An MPS client's limits from its shares: the thread percentage of its units (rounded up, at least 1; a
    request's units are split evenly, so they are the same on each of its GPUs), and its MiB on each GPU, named by
    UUID as NVIDIA recommends (by the ordinal the client sees where the node publishes no UUIDs: GFD's nodes,
    whose GPUs are all alike)."""
    units = max(share.units for share in container.gpus)
    percentage = min(100, max(1, -(-units * 100 // units_per_gpu)))
    memory = ",".join(f"{share.uuid or ordinal}={share.memory_mib}M" for ordinal, share in enumerate(container.gpus))
    return {"mps-active-thread-percentage": str(percentage), "mps-pinned-device-mem-limit": memory}


def env_for(container: str, *, mps: bool = False) -> list[dict]:
    """The environment entries (Kubernetes ``EnvVar`` dicts) that hand a GPU container its share."""
    fields = {**FIELDS, **MPS_FIELDS} if mps else FIELDS
    # apiVersion as the API server defaults it, so that a pod admitted again (another webhook changed it, and
    # admission is invoked once more) carries exactly these entries and they are recognised as fracgpu's
    env = [{"name": variable, "valueFrom": {"fieldRef": {
                "apiVersion": "v1", "fieldPath": f"metadata.annotations['{annotation_key(container, field)}']"}}}
           for variable, field in fields.items()]
    if mps:
        env.append({"name": "CUDA_MPS_PIPE_DIRECTORY", "value": MPS_PIPES})
    return env
