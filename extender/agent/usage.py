"""Per-pod GPU usage: NVML's running processes, attributed to pods and containers through their cgroups.

One reading (:func:`read_processes`) asks NVML, per GPU, for its compute and graphics processes and MPS clients
(a process in several lists counts once) with the memory each holds, and for the utilisation samples the driver kept since the last reading (not every GPU keeps
them). :func:`attribute` then finds each process's pod UID and container ID in ``/proc/<pid>/cgroup`` (NVML names
host PIDs: the agent shares the host's PID namespace), the pod and container names from the node's pods, and
the GPUs each container was given from the pod's ``fracgpu.io/assignment``. A container is flagged

* ``unassigned-gpu`` when it runs on a GPU its assignment does not list (or it has no assignment at all: on a
  fracgpu node every GPU user should have one), and
* ``over-memory`` when its processes on one GPU hold more memory than its share of that GPU.

Processes whose cgroup names no pod (host processes, a pod gone since) or a pod of fracgpu's own namespace (the
MPS server runs in the MPS daemon's pod) count as unattributed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping

from ..core.assignment import from_annotation
from ..core.errors import CorruptAnnotation
from ..core.settings import ASSIGNMENT_ANNOTATION
from .inventory import nvml_text

MIB = 1024 * 1024
OVER_MEMORY = "over-memory"
UNASSIGNED = "unassigned-gpu"

# kubelet's pod cgroup: pod<uid> (cgroupfs) or kubepods-<qos>-pod<uid with _ for ->.slice (systemd driver)
_POD = re.compile(r"(?:kubepods(?:-[a-z]+)?-)?pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
                  r"(?:\.slice)?")
# the container's, right below it: its 64-hex ID, bare (cgroupfs) or <runtime>-<id>.scope (systemd driver); the
# runtime may nest more below it (crun's .../container), which still belongs to the container
_CONTAINER = re.compile(r"(?:[a-z-]+-)?([0-9a-f]{64})(?:\.scope)?")


@dataclass(frozen=True)
class GpuProcess:
    gpu: int                   # NVML index
    uuid: str
    pid: int
    used_mib: int | None       # None where the driver does not say
    sm_percent: int | None     # mean SM utilisation of the samples since the last reading; None without samples


@dataclass
class GpuReading:
    gpus: dict[int, str] = field(default_factory=dict)  # index -> UUID, of the GPUs read
    processes: list[GpuProcess] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_processes(nvml: Any, last_sample: dict[int, int]) -> GpuReading:
    """Every GPU's processes. ``last_sample`` (GPU index -> NVML timestamp) is advanced past the samples read."""
    reading = GpuReading()
    try:
        count = nvml.nvmlDeviceGetCount()
    except nvml.NVMLError as exc:
        reading.problems.append(f"device count: {exc}")
        return reading
    for index in range(count):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = nvml_text(nvml.nvmlDeviceGetUUID(handle))
            processes = list(nvml.nvmlDeviceGetComputeRunningProcesses(handle))
        except nvml.NVMLError as exc:
            reading.problems.append(f"GPU {index} processes: {exc}")
            continue
        for more in (nvml.nvmlDeviceGetGraphicsRunningProcesses, nvml.nvmlDeviceGetMPSComputeRunningProcesses):
            try:
                processes += more(handle)
            except nvml.NVMLError:
                pass  # no graphics or MPS on this GPU or driver
        reading.gpus[index] = uuid
        sm = _sm_percent(nvml, handle, index, last_sample)
        memory: dict[int, int | None] = {}
        for process in processes:
            used = process.usedGpuMemory
            known = memory.get(process.pid)
            memory[process.pid] = None if used is None and known is None else max(known or 0, (used or 0) // MIB)
        reading.processes += [GpuProcess(index, uuid, pid, used, sm.get(pid)) for pid, used in sorted(memory.items())]
    return reading


def _sm_percent(nvml: Any, handle: Any, index: int, last_sample: dict[int, int]) -> dict[int, int]:
    try:
        samples = nvml.nvmlDeviceGetProcessUtilization(handle, last_sample.get(index, 0))
    except nvml.NVMLError:
        return {}  # NotFound: no sample since the last reading; NotSupported: this GPU keeps none
    by_pid: dict[int, list[int]] = defaultdict(list)
    for sample in samples:
        by_pid[sample.pid].append(sample.smUtil)
        last_sample[index] = max(last_sample.get(index, 0), sample.timeStamp)
    return {pid: round(sum(values) / len(values)) for pid, values in by_pid.items()}


def parse_cgroup(text: str) -> tuple[str, str] | None:
    """(pod UID, container ID) from a ``/proc/<pid>/cgroup``, v1 or v2, cgroupfs or systemd driver; None when the
    process is in no pod's container."""
    for line in text.splitlines():
        segments = line.split(":", 2)[-1].strip().split("/")
        for i, segment in enumerate(segments[:-1]):
            pod = _POD.fullmatch(segment)
            container = pod and _CONTAINER.fullmatch(segments[i + 1])
            if container:
                return pod.group(1).replace("_", "-"), container.group(1)
    return None


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    uid: str
    containers: Mapping[str, str]                   # container ID -> name
    shares: Mapping[str, Mapping[str | int, int]]   # container name -> GPU UUID (else index) -> its share in MiB
    problem: str | None = None                      # why its assignment could not be read
    field_paths: Mapping[str, str] = field(default_factory=dict)  # container name -> spec.containers{name}, ...

    def share(self, container: str, uuid: str, index: int) -> int | None:
        gpus = self.shares.get(container, {})
        return gpus.get(uuid, gpus.get(index))


def pod_info(pod: Mapping) -> PodInfo:
    """What attribution needs of a pod (a v1 Pod as JSON)."""
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    namespace, name, uid = metadata.get("namespace", ""), metadata.get("name", ""), metadata.get("uid", "")
    field_paths = {c.get("name", ""): f"spec.{kind}{{{c.get('name', '')}}}"
                   for kind in ("initContainers", "containers", "ephemeralContainers")
                   for c in (pod.get("spec") or {}).get(kind) or [] if isinstance(c, Mapping)}
    containers = {}
    for kind in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for container in status.get(kind) or []:
            runtime_id = (container.get("containerID") or "").partition("://")[2]
            if runtime_id:
                containers[runtime_id] = container.get("name", "")
    shares: dict[str, dict[str | int, int]] = {}
    problem = None
    raw = (metadata.get("annotations") or {}).get(ASSIGNMENT_ANNOTATION)
    if raw is not None:
        try:
            assignment = from_annotation(raw, pod_uid=uid, namespace=namespace, name=name)
        except CorruptAnnotation as exc:
            problem = str(exc)
        else:
            for container in assignment.containers:
                shares[container.name] = {share.uuid or share.index: share.memory_mib for share in container.gpus}
    return PodInfo(namespace, name, uid, containers, shares, problem, field_paths)


@dataclass(frozen=True)
class ContainerUsage:
    """One container's use of one GPU."""

    namespace: str
    pod: str
    uid: str
    container: str
    gpu: int
    uuid: str
    used_mib: int | None
    share_mib: int | None      # None: the GPU is not in its assignment
    sm_percent: int | None
    processes: int

    @property
    def violation(self) -> str | None:
        if self.share_mib is None:
            return UNASSIGNED
        if self.used_mib is not None and self.used_mib > self.share_mib:
            return OVER_MEMORY
        return None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.uid, self.container, self.uuid


@dataclass
class Attribution:
    containers: list[ContainerUsage]
    unattributed_mib: dict[int, int]       # GPU index -> MiB held by processes of no known pod
    unknown: set[tuple[str, str]]          # (pod UID, container ID) seen in cgroups but not in the pods given


def attribute(reading: GpuReading, cgroups: Mapping[int, tuple[str, str] | None],
              pods: Mapping[str, PodInfo], system: Collection[str] = ()) -> Attribution:
    """Group the processes by (pod, container, GPU). ``cgroups``: PID -> :func:`parse_cgroup` of it; ``system``:
    UIDs of pods whose processes count as outside any pod (fracgpu's own, such as the MPS server's)."""
    groups: dict[tuple[str, str, int], list[GpuProcess]] = defaultdict(list)
    unattributed: dict[int, int] = {index: 0 for index in reading.gpus}
    unknown = set()
    for process in reading.processes:
        owner = cgroups.get(process.pid)
        if owner and owner[0] in system:
            owner = None
        pod = pods.get(owner[0]) if owner else None
        container = pod.containers.get(owner[1]) if pod and owner else None
        if owner and container is None:
            unknown.add(owner)
        if container is None:
            unattributed[process.gpu] += process.used_mib or 0
            continue
        groups[(pod.uid, container, process.gpu)].append(process)
    rows = []
    for (uid, container, gpu), processes in sorted(groups.items()):
        pod = pods[uid]
        uuid = processes[0].uuid
        known = [p.used_mib for p in processes if p.used_mib is not None]
        samples = [p.sm_percent for p in processes if p.sm_percent is not None]
        rows.append(ContainerUsage(
            pod.namespace, pod.name, uid, container, gpu, uuid,
            used_mib=sum(known) if known else None, share_mib=pod.share(container, uuid, gpu),
            sm_percent=min(100, sum(samples)) if samples else None, processes=len(processes)))
    return Attribution(rows, unattributed, unknown)


def read_cgroups(proc_root: Path, pids: Iterable[int]) -> dict[int, tuple[str, str] | None]:
    """PID -> (pod UID, container ID) or None; a PID gone meanwhile is left out."""
    out = {}
    for pid in set(pids):
        try:  # cgroup names are bytes: one that is not UTF-8 must not stop the reading
            out[pid] = parse_cgroup((proc_root / str(pid) / "cgroup").read_text(errors="replace"))
        except OSError:
            continue
    return out
