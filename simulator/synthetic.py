"""Seeded synthetic clusters and workloads, as Kubernetes Node and Pod dicts.

The cluster mixes what inference fleets run: 8-GPU NVLink boxes, 4-GPU PCIe boxes across two sockets, and a
node pool reserved for one team. The workload is mostly fractional inference pods, with some whole-GPU and
multi-GPU pods, memory-bound pods and model-restricted pods. Same seed, same cluster and pods.
"""

from __future__ import annotations

import random

from extender.core import CoreSettings
from extender.testing.factories import gpu_node, gpu_pod


def nvlink_pairs(gpus: int) -> list[list[str]]:
    """GPUs 0-3 and 4-7 on one NVSwitch each (NV18), the two halves across sockets (SYS)."""
    half = gpus // 2
    return [["X" if i == j else ("NV18" if (i < half) == (j < half) else "SYS") for j in range(gpus)]
            for i in range(gpus)]


def pcie_two_sockets(gpus: int) -> list[list[str]]:
    half = gpus // 2
    return [["X" if i == j else ("NODE" if (i < half) == (j < half) else "SYS") for j in range(gpus)]
            for i in range(gpus)]


def synthetic_cluster(*, h100_nodes: int = 2, t4_nodes: int = 2, pool_nodes: int = 1,
                      settings: CoreSettings | None = None) -> list[dict]:
    settings = settings or CoreSettings()
    upg = settings.units_per_gpu
    nodes = [gpu_node(f"h100-{i}", gpus=8, memory_mib=81_559, model="NVIDIA H100 80GB HBM3",
                      links=nvlink_pairs(8), units_per_gpu=upg) for i in range(h100_nodes)]
    nodes += [gpu_node(f"t4-{i}", gpus=4, memory_mib=15_360, model="Tesla T4", links=pcie_two_sockets(4),
                       units_per_gpu=upg) for i in range(t4_nodes)]
    nodes += [gpu_node(f"team-a-{i}", gpus=4, memory_mib=40_960, model="NVIDIA A100-SXM4-40GB", pool="team-a",
                       links=nvlink_pairs(4), units_per_gpu=upg) for i in range(pool_nodes)]
    return nodes


def synthetic_workload(count: int, *, seed: int, settings: CoreSettings | None = None) -> list[dict]:
    """``count`` pods, drawn with ``random.Random(seed)``."""
    settings = settings or CoreSettings()
    upg = settings.units_per_gpu
    rng = random.Random(seed)
    pods = []
    for i in range(count):
        kind = rng.choices(["fraction", "memory-heavy", "whole", "multi", "t4-only", "team-a"],
                           weights=[50, 12, 12, 6, 10, 10])[0]
        name = f"{kind}-{i:03d}"
        if kind == "fraction":
            units = rng.choice([10, 20, 25, 30, 50]) * upg // 100
            pod = gpu_pod(name, units=units, memory_mib=rng.choice([2048, 4096, 8192]), settings=settings)
        elif kind == "memory-heavy":
            pod = gpu_pod(name, units=max(1, 20 * upg // 100), memory_mib=rng.choice([30_000, 60_000]),
                          settings=settings)
        elif kind == "whole":
            pod = gpu_pod(name, units=upg, settings=settings)
        elif kind == "multi":
            pod = gpu_pod(name, units=upg * rng.choice([2, 4]), settings=settings)
        elif kind == "t4-only":
            pod = gpu_pod(name, units=max(1, 25 * upg // 100), memory_mib=3072, models="T4", settings=settings)
        else:
            pod = gpu_pod(name, units=max(1, 50 * upg // 100), memory_mib=8192, pool="team-a", settings=settings)
        pods.append(pod)
    return pods


# (gpu_count, gpu_milli, weight): fractional inference shares, whole GPUs, multi-GPU jobs, CPU-only pods
_SHAPES = ((1, 100, 8), (1, 200, 6), (1, 250, 6), (1, 300, 4), (1, 500, 12), (1, 700, 3), (1, 1000, 25),
           (2, 1000, 6), (4, 1000, 4), (8, 1000, 2), (0, 0, 10))


def synthetic_trace(count: int, *, seed: int = 7, rate: float = 1.0, median_duration: float = 1800.0,
                    models: tuple[str, ...] = ("T4", "V100M16", "V100M32", "P100", "A10", "G2", "G3")) -> list:
    """``count`` :class:`~simulator.trace.SimPod` s with Poisson arrivals (``rate`` per second), log-normal
    durations around ``median_duration`` seconds, and a mix of shapes like the openb trace's; one pod in six
    is restricted to one or two GPU models. Same seed, same pods."""
    from .trace import SimPod

    if count < 0 or not rate > 0 or not median_duration > 0:
        raise ValueError("synthetic trace: count must be >= 0, rate and median duration positive")
    rng = random.Random(seed)
    weights = [w for _, _, w in _SHAPES]
    pods, now = [], 0.0
    for i in range(count):
        now += rng.expovariate(rate)
        gpus, milli, _ = rng.choices(_SHAPES, weights)[0]
        cpu = rng.choice((1000, 2000, 4000, 8000, 16000)) * max(gpus, 1)
        allowed = tuple(sorted(rng.sample(models, rng.choice((1, 2))))) if gpus and rng.random() < 1 / 6 else None
        pods.append(SimPod(name=f"synth-{i:06d}", cpu_milli=cpu, memory_mib=cpu * 4, gpu_count=gpus,
                           gpu_milli=milli, models=allowed, arrival=round(now, 3),
                           duration=round(rng.lognormvariate(0, 1) * median_duration, 3)))
    return pods
