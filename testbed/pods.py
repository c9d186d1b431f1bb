"""Pods for the real node (``testbed/node.py``): containers of the test image that report what they received.

Each container prints, to its log, the hand-off variables (``env NAME=value``, ``unset`` where absent), the GPU
files the NVIDIA runtime stand-in mounted (``device /dev/nvidia<i> <uuid>``), the files it sees in the MPS
daemon's directories (``file <path>``), then ``end``; :func:`parse_report` reads that back.
"""
from __future__ import annotations

from extender.core.handoff import MPS_PIPES
from extender.testing.factories import container, gpu_pod

from .node import IMAGE

SCHEDULER = "fracgpu-scheduler"  # scheduler-config/'s profile
VARIABLES = ("NVIDIA_VISIBLE_DEVICES", "FRACGPU_GPU_UNITS", "FRACGPU_GPU_MEMORY_MIB", "CUDA_MPS_PIPE_DIRECTORY",
             "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT")
REPORT = (f'for v in {" ".join(VARIABLES)}; do eval "x=\\${{$v-unset}}"; echo "env $v=$x"; done; '
          'for f in /dev/nvidia*; do [ -f "$f" ] && echo "device $f $(cat $f)"; done; '
          f'for f in {MPS_PIPES}/* /dev/shm/*; do [ -f "$f" ] && echo "file $f"; done; echo end')


def probe(name: str, *, units: int | None = None, memory_mib: int | None = None, init: bool = False,
          sidecar: bool = False) -> dict:
    """A container of the test image that prints what it received; an app container then sleeps."""
    out = container(name, units=units, memory_mib=memory_mib, sidecar=sidecar)
    out.update(image=IMAGE, imagePullPolicy="Never",
               command=["sh", "-c", REPORT if init and not sidecar else REPORT + "; exec sleep 2147483647"])
    return out


def pod_body(namespace: str, name: str, *, node: str, containers: list[dict], init: list[dict] = (),
             gpu_count=None, scheduler: str | None = SCHEDULER) -> dict:
    """A pod on the host's network (no CNI needed), bound for ``node``, that stops at once when deleted."""
    body = gpu_pod(name, namespace=namespace, gpu_count=gpu_count)
    del body["metadata"]["uid"]
    body["spec"] = {
        "containers": containers, "initContainers": list(init), "hostNetwork": True,
        "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 0,
        "nodeSelector": {"kubernetes.io/hostname": node},
    }
    if scheduler:
        body["spec"]["schedulerName"] = scheduler
    return body


def burst(namespace: str, node: str) -> list[dict]:
    """40 pods of mixed shapes that fit one 8-GPU node together: fractions, whole GPUs, spread over two GPUs,
    two GPU containers with a container without GPU, an init container, a native sidecar."""
    def pod(name: str, containers: list[dict], **kwargs) -> dict:
        return pod_body(namespace, name, node=node, containers=containers, **kwargs)

    pods = [pod(f"frac-{i}", [probe("main", units=(5, 10, 15)[i % 3], memory_mib=1000)]) for i in range(16)]
    pods += [pod(f"whole-{i}", [probe("main", units=100 * (i + 1))]) for i in range(2)]
    pods += [pod(f"spread-{i}", [probe("main", units=20, memory_mib=2000)], gpu_count=2) for i in range(4)]
    for i in range(8):
        containers = [probe("main", units=10, memory_mib=1000), probe("helper", units=5, memory_mib=500)]
        if i % 2:
            containers.append(probe("logger"))  # no GPU: sees none
        pods.append(pod(f"pair-{i}", containers))
    for i in range(6):
        init = [probe("warmup", units=15, memory_mib=2000, init=True)]
        if i % 3 == 0:
            init.append(probe("proxy", units=5, memory_mib=500, init=True, sidecar=True))
        pods.append(pod(f"init-{i}", [probe("main", units=10, memory_mib=1000)], init=init))
    pods += [pod(f"tiny-{i}", [probe("main", units=5, memory_mib=200)]) for i in range(4)]
    assert len(pods) == 40
    return pods


def parse_report(text: str) -> dict | None:
    """What one container reported: ``{"env": {...}, "devices": {path: uuid}, "files": [...]}``, or None while
    its report is not complete."""
    if "end" not in text.splitlines():
        return None
    env, devices, files = {}, {}, []
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "env":
            key, _, value = rest.partition("=")
            env[key] = value
        elif kind == "device":
            path, _, uuid = rest.partition(" ")
            devices[path] = uuid
        elif kind == "file":
            files.append(rest)
    return {"env": env, "devices": devices, "files": files}
