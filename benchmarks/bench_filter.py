"""Filter + score of one request against 500 candidate nodes of a 5,000-node x 8-GPU cluster with 100,000
placed pods: the per-call cost kube-scheduler pays for the extender's Filter and Prioritize.

Baseline, in the same process and on the same ledger state: the obvious scalar implementation (a Python loop
over nodes and GPUs, binpack score), to show what the vectorised path buys. Figures are printed, never asserted.

    python benchmarks/bench_filter.py [--nodes 5000 --pods 100000 --candidates 500 --calls 300]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from extender.core import CoreSettings, Ledger, evaluate, make_policy, parse_node, parse_pod  # noqa: E402
from extender.core.assignment import Assignment, ContainerAssignment, GpuShare  # noqa: E402
from extender.core.policies import POLICIES  # noqa: E402
from extender.testing.factories import gpu_node, gpu_pod  # noqa: E402

# Pod shapes (units of 100, count) and weights: mostly fractions, some whole GPUs. The mean is 33 units, so
# 100,000 pods ask for about 82% of 40,000 GPUs: a busy cluster where some candidates fit and most do not.
SHAPES = [((5, 1), 15), ((10, 1), 25), ((20, 1), 20), ((25, 1), 15), ((50, 1), 12), ((100, 1), 10),
          ((100, 2), 3)]
# FGD's target workload: the same shapes
WORKLOAD = [(0, count, units, None, weight / sum(w for _, w in SHAPES)) for (units, count), weight in SHAPES]


def build_cluster(nodes: int, gpus: int, pods: int, seed: int) -> Ledger:
    settings = CoreSettings()
    ledger = Ledger(settings, rows=nodes, width=gpus)
    template = gpu_node("template", gpus=gpus, memory_mib=81_920)
    inventory = parse_node(template, settings)
    for i in range(nodes):
        name = f"node-{i:05d}"
        infos = tuple(replace(g, uuid=f"GPU-{name}-{g.index}") for g in inventory.gpus)  # as gpu_node() names them
        ledger.upsert_node(replace(inventory, name=name, gpus=infos))
    rng = random.Random(seed)
    shapes, weights = zip(*SHAPES)
    names = ledger.node_names()
    placed = attempts = 0
    while placed < pods and attempts < pods * 20:
        attempts += 1
        units, count = rng.choices(shapes, weights)[0]
        name = rng.choice(names)
        row = ledger.row_of(name)
        memory = units * 800  # 800 MiB per unit: 80000 of 81920 MiB for a whole GPU
        free = [p for p in range(gpus) if ledger.free_units[row, p] >= units and ledger.free_mem[row, p] >= memory]
        if len(free) < count:
            continue
        chosen = rng.sample(free, count)
        shares = tuple(GpuShare(p, f"GPU-{name}-{p}", units, memory) for p in sorted(chosen))
        uid = f"pod-{placed}"
        ledger.adopt(Assignment(pod_uid=uid, namespace="bench", name=uid, node=name, pool=None, policy="binpack",
                                containers=(ContainerAssignment(name="main", kind="app", gpus=shares),)))
        placed += 1
    return ledger


def scalar_baseline(ledger: Ledger, units: int, memory: int, names: list[str]) -> dict[str, float]:
    """The obvious per-node loop: same checks and the binpack formula, one GPU at a time."""
    scores = {}
    for name in names:
        row = ledger.row_of(name)
        if row is None:
            continue
        fits = 0
        used_u = cap_u = used_m = cap_m = 0
        for p in range(int(ledger.gpu_count[row])):
            offered = int(ledger.offered_units[row, p])
            cap_u += offered
            cap_m += int(ledger.mem_usable[row, p])
            used_u += int(ledger.used_units[row, p])
            used_m += int(ledger.used_mem[row, p])
            if offered and int(ledger.free_units[row, p]) >= units and int(ledger.free_mem[row, p]) >= memory:
                fits += 1
        if fits:
            scores[name] = 10 * ((used_u + units) / cap_u + (used_m + memory) / cap_m) / 2
    return scores


def timed(fn, calls: int) -> list[float]:
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - start)
    return samples


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"mean {statistics.fmean(samples) * 1e3:.3f} ms  p50 {ordered[len(ordered) // 2] * 1e3:.3f} ms  p99 {p99 * 1e3:.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--pods", type=int, default=100_000)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    start = time.perf_counter()
    ledger = build_cluster(args.nodes, args.gpus, args.pods, args.seed)
    used = ledger.used_units.sum() / ledger.offered_units.sum()
    print(f"cluster: {args.nodes} nodes x {args.gpus} GPUs, {sum(1 for _ in ledger.assignments())} pods placed, "
          f"{used:.0%} of units allocated (built in {time.perf_counter() - start:.1f} s)")

    rng = random.Random(args.seed)
    names = ledger.node_names()
    candidate_sets = [rng.sample(names, args.candidates) for _ in range(args.calls)]
    settings = ledger.settings
    requests = {
        "1 GPU, 30 units + 8000 MiB": parse_pod(gpu_pod("probe", units=30, memory_mib=8000), settings),
        "2 whole GPUs": parse_pod(gpu_pod("probe2", units=200), settings),
    }

    single = requests["1 GPU, 30 units + 8000 MiB"]
    binpack = make_policy("binpack")
    core = timed(lambda i: evaluate(ledger, single, candidate_sets[i], binpack), args.calls)
    # what Filter answers: also every misfit's message (worked out when read)
    explained = timed(lambda i: evaluate(ledger, single, candidate_sets[i], binpack).failed, args.calls)
    base = timed(lambda i: scalar_baseline(ledger, 30, 8000, candidate_sets[i]), args.calls)
    evaluation = evaluate(ledger, single, candidate_sets[0], binpack)
    print(f"\nfilter+score, {args.candidates} candidates, {len(evaluation.fits)} fit / "
          f"{len(evaluation.failed) + len(evaluation.unresolvable)} misfits with messages:")
    print(f"  core evaluate (binpack)        {summary(core)}")
    print(f"  ... and the misfits' messages  {summary(explained)}")
    print(f"  scalar baseline (same checks)  {summary(base)}")
    print(f"  ratio baseline / core (mean)   {statistics.fmean(base) / statistics.fmean(core):.1f}x")

    print("\nper policy and request (mean / p99 per call):")
    for label, request in requests.items():
        for name in sorted(POLICIES):
            policy = make_policy(name, seed=1, workload=WORKLOAD)
            started = time.perf_counter()
            policy.warm(ledger)  # what the extender does once its ledger holds the cluster, before it is ready
            warm = time.perf_counter() - started
            samples = timed(lambda i: evaluate(ledger, request, candidate_sets[i], policy), args.calls)
            note = f"  (warm-up of all {args.nodes} nodes: {warm * 1e3:.0f} ms)" if warm > 0.001 else ""
            print(f"  {label:28s} {name:15s} {summary(samples)}{note}")


if __name__ == "__main__":
    main()
