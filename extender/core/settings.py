"""Settings the core needs, in one frozen object passed explicitly (never read from the environment here)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Annotation and label keys are part of fracgpu's protocol with agents, device plugins and users: fixed.
GPUS_ANNOTATION = "fracgpu.io/gpus"
ASSIGNMENT_ANNOTATION = "fracgpu.io/assignment"
GPU_COUNT_ANNOTATION = "fracgpu.io/gpu-count"
GPU_MODEL_ANNOTATION = "fracgpu.io/gpu-model"
POLICY_ANNOTATION = "fracgpu.io/policy"
POOL_LABEL = "fracgpu.io/pool"
# How a pod shares its GPUs (pod annotation) and how a node's GPUs are shared (node label and taint, set by the
# operator): time-slicing (the default) or MPS.
SHARING_ANNOTATION = SHARING_LABEL = "fracgpu.io/sharing"
SHARING_MODES = TIME_SLICING, MPS = "time-slicing", "mps"

# NVIDIA GPU Feature Discovery labels, read when a node has no fracgpu inventory annotation.
GFD_COUNT_LABEL = "nvidia.com/gpu.count"
GFD_MEMORY_LABEL = "nvidia.com/gpu.memory"
GFD_PRODUCT_LABEL = "nvidia.com/gpu.product"


# a Kubernetes label key: an optional DNS-subdomain prefix and '/', then a name of up to 63 characters
_LABEL_KEY = re.compile(r"(?:[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class CoreSettings:
    """How requests are read and how much of each GPU may be handed out.

    ``units_per_gpu``: compute units one physical GPU offers (100 by default; 10 matches a device plugin that
    advertises 10 vGPUs per GPU). ``reserve_mib`` and ``reserve_percent`` are held back on every GPU for CUDA
    contexts: usable memory = memoryMiB - reserve_mib - memoryMiB * reserve_percent / 100.
    """

    units_per_gpu: int = 100
    vgpu_resource: str = "fracgpu.io/vgpu"
    memory_resource: str = "fracgpu.io/vgpu-memory"
    reserve_mib: int = 0
    reserve_percent: float = 0.0
    pools_enabled: bool = True
    # the label naming a node's pool (and a pod's, with its nodeSelector or required node affinity on it)
    pool_label: str = POOL_LABEL

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.units_per_gpu, int) or isinstance(self.units_per_gpu, bool) or self.units_per_gpu < 1:
            problems.append(f"units_per_gpu must be a positive integer, got {self.units_per_gpu!r}")
        if not isinstance(self.reserve_mib, int) or self.reserve_mib < 0:
            problems.append(f"reserve_mib must be a non-negative integer, got {self.reserve_mib!r}")
        if not (0.0 <= float(self.reserve_percent) < 100.0):
            problems.append(f"reserve_percent must be in [0, 100), got {self.reserve_percent!r}")
        for field in ("vgpu_resource", "memory_resource"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value or "/" not in value:
                problems.append(f"{field} must be an extended resource name like 'example.com/name', got {value!r}")
        if not isinstance(self.pool_label, str) or not _LABEL_KEY.fullmatch(self.pool_label):
            problems.append(f"pool_label must be a label key like 'example.com/pool', got {self.pool_label!r}")
        if self.vgpu_resource == self.memory_resource:
            problems.append("vgpu_resource and memory_resource must differ")
        if problems:
            raise ValueError("invalid core settings: " + "; ".join(problems))

    def reserve_for(self, memory_mib: int) -> int:
        """MiB held back on a GPU of ``memory_mib``: ``reserve_mib + ceil(memory_mib * reserve_percent / 100)``."""
        percent_part = -(-int(memory_mib * self.reserve_percent * 1000) // 100_000) if self.reserve_percent else 0
        return min(memory_mib, self.reserve_mib + percent_part)
