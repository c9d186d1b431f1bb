"""How far a best-fit inflation run is from this machine's floor: the simulator (the core's placement) against a
deliberately stripped loop in the same script.

The stripped loop keeps the simulator's scheme (per pod shape, each node's last score; only nodes whose row changed
are scored again, with numpy) but nothing else: no misfit reasons, no ledger records of pods, no pools, models,
several containers or over-commit, no metrics; it knows best-fit's "cpu+units" scoring only. It is not a policy and
nothing uses it. Both runs must make the same decision for every pod (asserted), so the ratio is the price of the
core's generality per pod.

    python benchmarks/bench_sim_floor.py [--seed 42] [--runs 3]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import simulator.engine as engine  # noqa: E402
from simulator.compare import settle  # noqa: E402
from simulator.experiments import inflate, inflation  # noqa: E402
from simulator.policy_specs import PAPER  # noqa: E402
from simulator.trace import SETTINGS, load_openb_nodes, load_openb_pods  # noqa: E402

RESOLUTION = 0.1  # the simulator's score steps (engine.SimCluster's default)


def stripped_run(nodes, pods, seed: int) -> list[tuple[str, str | None]]:
    """(pod, node or None) per pod, in arrival order, as the default inflation run decides them."""
    rng = random.Random(seed)
    capacity = sum(len(n.gpus) for n in nodes) * SETTINGS.units_per_gpu
    order = inflate(pods, capacity, 1.3, rng)
    nodes = list(nodes)
    rng.shuffle(nodes)
    width = max(len(n.gpus) for n in nodes)
    free = np.zeros((len(nodes), width), dtype=np.int64)
    usable = np.zeros((len(nodes), width), dtype=np.int64)
    for i, node in enumerate(nodes):
        free[i, : len(node.gpus)] = SETTINGS.units_per_gpu
        usable[i, : len(node.gpus)] = [g.memory_mib - SETTINGS.reserve_for(g.memory_mib) for g in node.gpus]
    free_mem = usable.copy()
    cpu = np.array([n.cpu_milli for n in nodes], dtype=np.int64)
    host_mem = np.array([n.memory_mib for n in nodes], dtype=np.int64)
    max_units, max_cpu = int(free.sum(axis=1).max()), int(cpu.max())
    version = np.zeros(len(nodes), dtype=np.int64)
    shapes: dict[tuple, tuple[list[int], np.ndarray]] = {}
    decisions = []
    for generation, pod in enumerate(order, start=1):
        seen, scores = shapes.setdefault(pod.shape_key, ([-1], np.full(len(nodes), -np.inf)))
        stale = (version > seen[0]).nonzero()[0]
        if len(stale):
            scores[stale] = -np.inf
            top = int(scores.argmax())
            if scores[top] > -np.inf:
                stale = np.concatenate((stale, (top,)))
            units, mem_usable, room = free.take(stale, axis=0), usable.take(stale, axis=0), cpu.take(stale)
            fit = (room >= pod.cpu_milli) & (host_mem.take(stale) >= pod.memory_mib)
            units_left = np.maximum(units, 0).sum(axis=1)
            if pod.gpu_count:
                memory = (pod.gpu_milli * mem_usable) // SETTINGS.units_per_gpu
                usable_gpus = (units >= pod.gpu_milli) & (free_mem.take(stale, axis=0) >= memory)
                fit &= usable_gpus.sum(axis=1) >= pod.gpu_count
                units_left = units_left - pod.gpu_milli * pod.gpu_count
            leftover = 0.5 * (units_left / max_units) + 0.5 * ((room - pod.cpu_milli) / max_cpu)
            score = 10.0 * np.minimum(np.maximum(1.0 - leftover, 0.0), 1.0)
            scores[stale[fit]] = np.floor(score[fit] / RESOLUTION + 1e-9)
            seen[0] = generation - 1
        best = int(scores.argmax())
        if scores[best] == -np.inf:
            decisions.append((pod.name, None))
            continue
        decisions.append((pod.name, nodes[best].name))
        if pod.gpu_count:  # the best GPUs: fewest units left, then least memory left, lowest position
            memory = (pod.gpu_milli * usable[best]) // SETTINGS.units_per_gpu
            ok = (free[best] >= pod.gpu_milli) & (free_mem[best] >= memory)
            left = (free[best] - pod.gpu_milli) + (free_mem[best] - memory) / (usable[best] + 1)
            chosen = np.argsort(np.where(ok, left, np.inf), kind="stable")[: pod.gpu_count]
            free[best, chosen] -= pod.gpu_milli
            free_mem[best, chosen] -= memory[chosen]
        cpu[best] -= pod.cpu_milli
        host_mem[best] -= pod.memory_mib
        version[best] = generation
    return decisions


def simulator_run(nodes, pods, seed: int) -> list[tuple[str, str | None]]:
    decisions = []
    place = engine.SimCluster.place

    def recording(self, pod, uid):
        outcome = place(self, pod, uid)
        decisions.append((uid, outcome.node))
        return outcome

    engine.SimCluster.place = recording
    try:
        inflation(nodes, pods, PAPER["best-fit"], seed=seed)
    finally:
        engine.SimCluster.place = place
    return decisions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    nodes, pods = load_openb_nodes(), load_openb_pods()
    settle()  # as a compare worker does once the trace is loaded
    print(f"{'run':>4} {'simulator s':>12} {'stripped s':>11} {'ratio':>6}")
    for run in range(args.runs):
        start = time.perf_counter()
        ours = simulator_run(nodes, pods, args.seed)
        middle = time.perf_counter()
        floor = stripped_run(nodes, pods, args.seed)
        end = time.perf_counter()
        assert ours == floor, "the stripped loop must decide every pod as the simulator does"
        print(f"{run + 1:>4} {middle - start:>12.2f} {end - middle:>11.2f} {(middle - start) / (end - middle):>5.1f}x",
              flush=True)
    print(f"{len(ours)} pods, {sum(node is not None for _, node in ours)} placed, the same decision for each")


if __name__ == "__main__":
    main()
