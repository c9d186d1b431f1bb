"""Read a machine's GPUs through NVML into the ``fracgpu.io/gpus`` inventory the extender reads.

``nvml`` is the ``pynvml`` module (from ``nvidia-ml-py``) or anything answering the same calls, such as
:class:`extender.agent.fake.FakeNvml`. Every call that can fail on some GPU or driver degrades only the field it
serves, recorded in ``problems``; the report itself always comes back. A GPU that has fallen off the bus, or
whose UUID or memory cannot be read, is published unhealthy (offered to nobody). A MIG-enabled GPU is published
with ``mig: true`` and is not offered for sharing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Callable

import networkx as nx

from ..core.inventory import inventory_annotation
from ..core.topology import link_graph

MIB = 1024 * 1024


@dataclass
class Report:
    """What the agent read: the annotation payload, the link graph, and what could not be read."""

    driver: str | None
    gpus: list[dict]
    links: list[list[str]] | None
    graph: nx.Graph
    problems: list[str] = field(default_factory=list)

    def annotation(self, units_per_gpu: int) -> str:
        return inventory_annotation(units_per_gpu=units_per_gpu, gpus=self.gpus, links=self.links)

    def totals(self, units_per_gpu: int) -> dict[str, int]:
        """Node-status extended resources: offered units and MiB of the GPUs that may be shared."""
        offered = [g for g in self.gpus if g["healthy"] and not g["mig"]]
        return {"vgpu": len(offered) * units_per_gpu, "vgpu-memory": sum(g["memoryMiB"] for g in offered)}


def read_inventory(nvml: Any) -> Report:
    """One full reading. NVML must already be initialised (see :func:`open_nvml`)."""
    problems: list[str] = []

    def ask(what: str, call: Callable[[], Any], default: Any = None) -> Any:
        try:
            return call()
        except nvml.NVMLError as exc:
            problems.append(f"{what}: {_name(exc)}")
            return default

    driver = ask("driver version", nvml.nvmlSystemGetDriverVersion)
    count = ask("device count", nvml.nvmlDeviceGetCount, 0)
    gpus, handles, bus_ids = [], [], []
    for index in range(count):
        handle = ask(f"GPU {index} handle", lambda: nvml.nvmlDeviceGetHandleByIndex(index))
        gpus.append(_read_gpu(nvml, index, handle, problems))
        handles.append(handle)
        pci = ask(f"GPU {index} PCI info", lambda: nvml.nvmlDeviceGetPciInfo(handle)) if handle else None
        bus_ids.append(_bus(pci.busId) if pci is not None else None)
    links = _links(nvml, handles, bus_ids, ask) if len(handles) > 1 else None
    graph = link_graph(tuple(map(tuple, links))) if links is not None else nx.empty_graph(len(gpus))
    return Report(driver=driver, gpus=gpus, links=links, graph=graph, problems=problems)


def _read_gpu(nvml: Any, index: int, handle: Any, problems: list[str]) -> dict:
    where = f"GPU {index}"
    record: dict = {"index": index, "healthy": handle is not None, "mig": False}
    if handle is None:
        # Size unknown; the schema wants a positive one, and an unhealthy GPU is offered to nobody anyway.
        record.update(model="unknown", memoryMiB=1, unhealthyReason=f"no NVML handle: {problems[-1]}")
        return record
    lost = []

    def field_(what: str, call: Callable[[], Any], default: Any = None) -> Any:
        try:
            return call()
        except nvml.NVMLError as exc:
            if isinstance(exc, nvml.NVMLError_GpuIsLost):
                lost.append(what)
            problems.append(f"{where} {what}: {_name(exc)}")
            return default

    record["uuid"] = field_("UUID", lambda: nvml_text(nvml.nvmlDeviceGetUUID(handle)))
    record["model"] = field_("name", lambda: nvml_text(nvml.nvmlDeviceGetName(handle)), "unknown")
    memory = field_("memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    record["memoryMiB"] = max(1, memory.total // MIB) if memory is not None else 1
    record["usedMemoryMiB"] = memory.used // MIB if memory is not None else 0
    mig = field_("MIG mode", lambda: nvml.nvmlDeviceGetMigMode(handle))
    record["mig"] = bool(mig and mig[0])
    numa = field_("NUMA node", lambda: nvml.nvmlDeviceGetNumaNodeId(handle))
    if isinstance(numa, int) and numa >= 0:
        record["numaNode"] = numa
    ecc = field_("uncorrected ECC errors", lambda: nvml.nvmlDeviceGetTotalEccErrors(
        handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC))
    pending = field_("retired pages pending", lambda: nvml.nvmlDeviceGetRetiredPagesPendingStatus(handle))
    reasons = []
    if lost:
        reasons.append("fallen off the bus")
    if record["uuid"] is None or memory is None:
        reasons.append("UUID or memory unreadable")
    if ecc:
        reasons.append(f"{ecc} uncorrected ECC errors since boot")
    if pending:
        reasons.append("retired pages pending a reset")
    record["healthy"] = not reasons
    if reasons:
        record["unhealthyReason"] = "; ".join(reasons)
    return record


def _links(nvml: Any, handles: list, bus_ids: list, ask: Callable) -> list[list[str]]:
    """nvidia-smi's matrix: NV<n> for n active NVLinks between the pair, else the PCIe common ancestor."""
    n = len(handles)
    nvlinks = [[0] * n for _ in range(n)]
    to_switch = [0] * n  # NVLinks into an NVSwitch fabric (HGX boards): every such pair talks over it
    position = {bus: i for i, bus in enumerate(bus_ids) if bus is not None}
    for i, handle in enumerate(handles):
        if handle is None:
            continue
        for link in range(nvml.NVML_NVLINK_MAX_LINKS):
            try:
                if nvml.nvmlDeviceGetNvLinkState(handle, link) != nvml.NVML_FEATURE_ENABLED:
                    continue
                remote = _bus(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId)
            except nvml.NVMLError:
                break  # no NVLink on this GPU, or no more links: PCIe only
            try:
                switch = nvml.nvmlDeviceGetNvLinkRemoteDeviceType(handle, link) == nvml.NVML_NVLINK_DEVICE_TYPE_SWITCH
            except nvml.NVMLError:
                switch = False  # older drivers: a remote that is not one of our GPUs counts for nothing
            j = position.get(remote)
            if switch:
                to_switch[i] += 1
            elif j is not None and j != i:
                nvlinks[i][j] += 1
    ancestor = {
        nvml.NVML_TOPOLOGY_INTERNAL: "PIX", nvml.NVML_TOPOLOGY_SINGLE: "PIX", nvml.NVML_TOPOLOGY_MULTIPLE: "PXB",
        nvml.NVML_TOPOLOGY_HOSTBRIDGE: "PHB", nvml.NVML_TOPOLOGY_NODE: "NODE", nvml.NVML_TOPOLOGY_SYSTEM: "SYS",
    }
    matrix = [["X" if i == j else "SYS" for j in range(n)] for i in range(n)]
    for i, j in combinations(range(n), 2):
        count = max(nvlinks[i][j], nvlinks[j][i]) or min(to_switch[i], to_switch[j])
        if count:
            code = f"NV{count}"
        elif handles[i] is None or handles[j] is None:
            code = "SYS"  # unknown: assume the worst link
        else:
            level = ask(f"topology GPU {i}-{j}",
                        lambda: nvml.nvmlDeviceGetTopologyCommonAncestor(handles[i], handles[j]))
            code = ancestor.get(level, "SYS")
        matrix[i][j] = matrix[j][i] = code
    return matrix


def _name(exc: BaseException) -> str:
    return f"{type(exc).__name__.removeprefix('NVMLError_') or 'NVMLError'} ({exc})"


def nvml_text(value: Any) -> str:
    """A string NVML returned: bytes from older nvidia-ml-py, str from newer."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _bus(bus_id: Any) -> str:
    """PCI bus ids compared case-insensitively, domain normalised to 8 digits (NVML mixes 4 and 8)."""
    text = nvml_text(bus_id).strip().lower()
    domain, _, rest = text.partition(":")
    return f"{int(domain, 16):08x}:{rest}" if rest else text
