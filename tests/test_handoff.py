"""The hand-off annotations written with each Binding, and the environment that reads them."""

import re

from api_helpers import bind_args, filter_args, gpu_node, gpu_pod, post, start
from extender.core.assignment import Assignment, ContainerAssignment, GpuShare
from extender.core.handoff import MPS_PIPES, env_for, handoff_annotations

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
    annotations = handoff_annotations(assignment, units_per_gpu=100)
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


def test_an_mps_client_is_limited_to_its_units_and_its_memory_on_each_of_its_gpus():
    assignment = Assignment(pod_uid="u", namespace="ns", name="p", node="n", pool=None, policy="binpack", containers=(
        ContainerAssignment(name="main", kind="app", gpus=(GpuShare(2, "GPU-b", 40, 8000), GpuShare(0, "GPU-a", 40,
                                                                                                    8000))),
        ContainerAssignment(name="small", kind="app", gpus=(GpuShare(1, None, 1, 100),)),
        ContainerAssignment(name="whole", kind="app", gpus=(GpuShare(3, "GPU-d", 1000, 80000),)),
    ))
    plain = handoff_annotations(assignment, units_per_gpu=1000)
    annotations = handoff_annotations(assignment, units_per_gpu=1000, mps=True)
    assert set(annotations) - set(plain) == {f"{c}.containers.fracgpu.io/mps-{f}" for c in ("main", "small", "whole")
                                            for f in ("active-thread-percentage", "pinned-device-mem-limit")}
    assert annotations["main.containers.fracgpu.io/mps-active-thread-percentage"] == "4"  # 40 of 1000 units
    assert annotations["main.containers.fracgpu.io/mps-pinned-device-mem-limit"] == "GPU-b=8000M,GPU-a=8000M"
    assert annotations["small.containers.fracgpu.io/mps-active-thread-percentage"] == "1"  # 0.1%, rounded up
    assert annotations["small.containers.fracgpu.io/mps-pinned-device-mem-limit"] == "0=100M"  # no UUID: ordinal
    assert annotations["whole.containers.fracgpu.io/mps-active-thread-percentage"] == "100"
    env = {e["name"]: e.get("value") or e["valueFrom"]["fieldRef"]["fieldPath"] for e in env_for("main", mps=True)}
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == MPS_PIPES
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == \
        "metadata.annotations['main.containers.fracgpu.io/mps-active-thread-percentage']"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == \
        "metadata.annotations['main.containers.fracgpu.io/mps-pinned-device-mem-limit']"
    assert not any(e["name"].startswith("CUDA_MPS") for e in env_for("main"))


async def test_the_binding_of_an_mps_pod_carries_its_mps_limits(aiohttp_client):
    client, ext, source = await start(aiohttp_client, [gpu_node("a", gpus=2, memory_mib=16000)])
    pods = [gpu_pod("mps", units=30, memory_mib=4000), gpu_pod("ts", units=30, memory_mib=4000)]
    pods[0]["metadata"]["annotations"]["fracgpu.io/sharing"] = "mps"
    for pod in pods:
        source.add_pod(pod)
        await post(client, "filter", filter_args(pod, names=["a"]))
        assert (await post(client, "bind", bind_args(pod, "a"))) == {"Error": ""}
    mps = source.pods[("default", "mps")]["metadata"]["annotations"]
    assert mps["main.containers.fracgpu.io/mps-active-thread-percentage"] == "30"
    uuid = mps["main.containers.fracgpu.io/visible-devices"]
    assert mps["main.containers.fracgpu.io/mps-pinned-device-mem-limit"] == f"{uuid}=4000M"
    assert not any("mps-" in key for key in source.pods[("default", "ts")]["metadata"]["annotations"])


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
