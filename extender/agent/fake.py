"""A fake NVML: answers the ``pynvml`` calls the agent makes from a JSON description of a machine.

Constants and error classes are pynvml's own (the package imports without a driver), so the agent's error
handling is exercised against the real exception hierarchy. A fixture (``fixtures/*.json``)::

    {"driver": "550.54.15",
     "gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-...", "memoryMiB": 81559, "usedMiB": 0,
               "busId": "00000000:18:00.0", "numa": 0, "socket": 0, "hostBridge": 0, "switch": 0,
               "mig": false, "eccUncorrected": 0, "retiredPagesPending": false, "computeMode": 0,
               "nvlinks": [{"to": "switch" or "00000000:2A:00.0", "links": 18}, ...],
               "processes": [{"pid": 4242, "usedMiB": 2048, "smUtil": 35}, ...],  # compute processes
               "graphicsProcesses": [...], "mpsProcesses": [...],   # graphics processes, MPS clients
               "fail": {"uuid": "NotSupported", ...},      # a call answered with that NVMLError_*
               "lost": false}]}                           # every call: NVMLError_GpuIsLost

Failable calls, by key: ``handle``, ``uuid``, ``name``, ``memory``, ``mig``, ``numa``, ``ecc``, ``retired``,
``pci``, ``nvlink``, ``topology``, ``compute`` (get and set the compute mode), ``processes``, ``graphics``, ``mps``,
``utilization``. A process without ``usedMiB`` has its memory unknown (NVML's None); one with ``smUtil`` gives a
utilisation sample stamped with the fake's ``clock`` (1 at first; a test moves it on to make new samples).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml

FIXTURES = Path(__file__).with_name("fixtures")
MIB = 1024 * 1024


class FakeNvml:
    def __init__(self, machine: dict) -> None:
        self.machine = machine
        self.gpus = machine.get("gpus", [])
        self.initialised = False
        self.clock = 1  # the timestamp of the utilisation samples
        for name in dir(pynvml):  # constants and NVMLError classes, as the real module has them
            if name.startswith(("NVML_", "NVMLError")):
                setattr(self, name, getattr(pynvml, name))

    @classmethod
    def fixture(cls, name: str) -> "FakeNvml":
        """A fixture of ``fixtures/`` by name, or any machine's JSON file by its path (``*.json``)."""
        path = Path(name) if name.endswith(".json") else FIXTURES / f"{name}.json"
        return cls(json.loads(path.read_text()))

    # ------------------------------------------------------------------ library
    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        self._ready()
        return self.machine.get("driver", "0")

    def nvmlDeviceGetCount(self) -> int:
        self._ready()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._ready()
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._fail(index, "handle")
        return index

    # ------------------------------------------------------------------ per device
    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self._gpu(h, "uuid")["uuid"]

    def nvmlDeviceGetName(self, h: int) -> str:
        return self._gpu(h, "name")["name"]

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        gpu = self._gpu(h, "memory")
        total, used = gpu["memoryMiB"] * MIB, gpu.get("usedMiB", 0) * MIB
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetMigMode(self, h: int) -> list[int]:
        mode = int(bool(self._gpu(h, "mig").get("mig", False)))
        return [mode, mode]

    def nvmlDeviceGetComputeMode(self, h: int) -> int:
        return self._gpu(h, "compute").get("computeMode", pynvml.NVML_COMPUTEMODE_DEFAULT)

    def nvmlDeviceSetComputeMode(self, h: int, mode: int) -> None:
        self._gpu(h, "compute")["computeMode"] = mode

    def nvmlDeviceGetNumaNodeId(self, h: int) -> int:
        gpu = self._gpu(h, "numa")
        if "numa" not in gpu:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu["numa"]

    def nvmlDeviceGetTotalEccErrors(self, h: int, error_type: int, counter_type: int) -> int:
        return self._gpu(h, "ecc").get("eccUncorrected", 0)

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: int) -> int:
        return int(bool(self._gpu(h, "retired").get("retiredPagesPending", False)))

    def nvmlDeviceGetPciInfo(self, h: int) -> Any:
        return SimpleNamespace(busId=self._gpu(h, "pci")["busId"])

    def nvmlDeviceGetNvLinkState(self, h: int, link: int) -> int:
        links = self._links(h)
        if link >= len(links):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED if not links else pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return pynvml.NVML_FEATURE_ENABLED

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: int, link: int) -> Any:
        to = self._links(h)[link]
        return SimpleNamespace(busId="00000000:ff:00.0" if to == "switch" else to)

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, h: int, link: int) -> int:
        to = self._links(h)[link]
        return pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH if to == "switch" else pynvml.NVML_NVLINK_DEVICE_TYPE_GPU

    def nvmlDeviceGetTopologyCommonAncestor(self, h1: int, h2: int) -> int:
        a, b = self._gpu(h1, "topology"), self._gpu(h2, "topology")
        if a.get("socket", 0) != b.get("socket", 0):
            return pynvml.NVML_TOPOLOGY_SYSTEM
        if a.get("hostBridge") != b.get("hostBridge"):
            return pynvml.NVML_TOPOLOGY_NODE
        if a.get("switch") != b.get("switch"):
            return pynvml.NVML_TOPOLOGY_HOSTBRIDGE
        return pynvml.NVML_TOPOLOGY_SINGLE

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list:
        return self._processes(self._gpu(h, "processes").get("processes", []))

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: int) -> list:
        return self._processes(self._gpu(h, "graphics").get("graphicsProcesses", []))

    def nvmlDeviceGetMPSComputeRunningProcesses(self, h: int) -> list:
        return self._processes(self._gpu(h, "mps").get("mpsProcesses", []))

    def nvmlDeviceGetProcessUtilization(self, h: int, last_seen: int) -> list:
        gpu = self._gpu(h, "utilization")
        samples = [SimpleNamespace(pid=p["pid"], timeStamp=self.clock, smUtil=p["smUtil"], memUtil=0, encUtil=0,
                                   decUtil=0)
                   for key in ("processes", "graphicsProcesses", "mpsProcesses") for p in gpu.get(key, [])
                   if "smUtil" in p]
        samples = [s for s in samples if s.timeStamp > last_seen]
        if not samples:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return samples

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _processes(entries: list[dict]) -> list:
        return [SimpleNamespace(pid=p["pid"], usedGpuMemory=p["usedMiB"] * MIB if "usedMiB" in p else None,
                                gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF) for p in entries]

    def _ready(self) -> None:
        if not self.initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, h: int, call: str) -> dict:
        self._ready()
        self._fail(h, call)
        return self.gpus[h]

    def _links(self, h: int) -> list[str]:
        """One remote per NVLink, in link order."""
        return [group["to"] for group in self._gpu(h, "nvlink").get("nvlinks", [])
                for _ in range(group.get("links", 1))]

    def _fail(self, index: int, call: str) -> None:
        gpu = self.gpus[index]
        if gpu.get("lost"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        error = gpu.get("fail", {}).get(call)
        if error:
            code = getattr(pynvml, f"NVML_ERROR_{_upper_snake(error)}")
            raise pynvml.NVMLError(code)


def _upper_snake(name: str) -> str:
    """'NotSupported' -> 'NOT_SUPPORTED', 'GpuIsLost' -> 'GPU_IS_LOST'."""
    out = "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(name))
    return out.upper()
