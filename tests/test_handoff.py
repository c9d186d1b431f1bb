"""The hand-off annotations written with each Binding, and the environment that reads them."""

import re

from api_helpers import bind_args, filter_args, gpu_node, gpu_pod, post, start
from extender.core.assignment import Assignment, ContainerAssignment, GpuShare
from extender.core.handoff import env_for, handoff_annotations

# An annotation key as the API server validates it: an optional DNS-subdomain prefix, then a name of at most 63
ANNOTATION_KEY = re.compile(r"^(([a-z0-9]([-a-z0-9]*[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                            r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def test_each_gpu_container_gets_its_own_uuids_units_and_memory_in_assignment_order():
    assignment = Assignment(pod_uid="u", namespace="ns", name="p", node="n", pool=None, policy="binpack", containers=(
        ContainerAssignment(name="warmup", kind="init", gpus=(GpuShare(3, "GPU-c", 100, 16000),)),
        ContainerAssignment(name="main-" + "x" * 58, kind="app",
                            gpus=(GpuShare(2, "GPU-b", 40, 8000), GpuShare(0, "GPU-a", 40, 8000))),
        ContainerAssignment(name="gfd", kind="app", gpus=(GpuShare(1, None, 10, 100),)),
    ))
    annotations = handoff_annotations(assignment)
    long = "main-" + "x" * 58  # the longest container name Kubernetes allows (63)
    assert annotations[f"{long}.containers.fracgpu.io/visible-devices"] == "GPU-b,GPU-a"
    assert annotations[f"{long}.containers.fracgpu.io/units"] == "40,40"
    assert annotations[f"{long}.containers.fracgpu.io/memory-mib"] == "8000,8000"
    assert annotations["warmup.containers.fracgpu.io/visible-devices"] == "GPU-c"
    assert annotations["gfd.containers.fracgpu.io/visible-devices"] == "1"  # no UUID published: the index
    assert len(annotations) == 9 and all(ANNOTATION_KEY.match(k) and len(k.split("/")[0]) <= 253 for k in annotations)
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in env_for("warmup")}
    assert env == {"NVIDIA_VISIBLE_DEVICES": "metadata.annotations['warmup.containers.fracgpu.io/visible-devices']",
                   "FRACGPU_GPU_UNITS": "metadata.annotations['warmup.containers.fracgpu.io/units']",
                   "FRACGPU_GPU_MEMORY_MIB": "metadata.annotations['warmup.containers.fracgpu.io/memory-mib']"}


async def test_the_binding_carries_the_handoff_with_the_assignment(aiohttp_client):
    client, ext, source = await start(aiohttp_client, [gpu_node("a", gpus=2, memory_mib=16000)])
    pod = gpu_pod("p", units=80, memory_mib=4000, gpu_count=2)
    source.add_pod(pod)
    await post(client, "filter", filter_args(pod, names=["a"]))
    assert (await post(client, "bind", bind_args(pod, "a"))) == {"Error": ""}
    annotations = source.pods[("default", "p")]["metadata"]["annotations"]
    assert annotations["main.containers.fracgpu.io/visible-devices"] == "GPU-a-0,GPU-a-1"
    assert annotations["main.containers.fracgpu.io/units"] == "40,40"
    assert annotations["main.containers.fracgpu.io/memory-mib"] == "2000,2000"
