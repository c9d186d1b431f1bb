"""One inflation run of the default openb trace (1213 GPU nodes, 1.3x, seed 42) per policy, on one core, and how
the cost grows with the cluster (2x and 4x: every node repeated, and inflation fills each cluster to 1.3x of its
own capacity, so the pods grow with it).

Baseline, in the same script and on the same run: the simulator's uncached path (every pod evaluated over every
node, as the extender's Filter does), to show what the per-shape cache buys. The published simulator needs about
10 minutes a run on 2 vCPU (its README); that figure is quoted, not measured. Figures are printed, never asserted.

Each configuration runs ``--repeat`` times (default 3) and the median is reported with the fastest: on a shared
machine one run can be 1.5x another of the same code.

    python benchmarks/bench_sim.py [--policies fgd,best-fit,fgd-lookahead] [--scales 1,2,4] [--repeat 3] [--no-baseline]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.compare import settle  # noqa: E402
from simulator.experiments import inflation  # noqa: E402
from simulator.policy_specs import resolve  # noqa: E402
from simulator.trace import load_openb_nodes, load_openb_pods  # noqa: E402

PUBLISHED_SECONDS = 600.0


def repeat_nodes(nodes, times):
    return [replace(n, name=f"{n.name}-x{k}") if k else n for k in range(times) for n in nodes]


def timed(nodes, pods, label, cache, repeat=1):
    """(median seconds, fastest seconds, the result) over ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = inflation(nodes, pods, resolve(label), seed=42, cache=cache)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policies", default="fgd,best-fit")
    parser.add_argument("--scales", default="1,2,4")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    nodes, pods = load_openb_nodes(), load_openb_pods()
    settle()  # as a compare worker does once the trace is loaded
    scales = [int(s) for s in args.scales.split(",")]
    print(f"{'policy':<14} {'cluster':>8} {'pods':>7} {'median s':>8} {'fastest':>7} {'x base':>7} {'vs 1x':>6} "
          f"{'vs published':>12}")
    for label in args.policies.split(","):
        first = None
        for scale in scales:
            cluster = repeat_nodes(nodes, scale)
            seconds, fastest, result = timed(cluster, pods, label, cache=True, repeat=args.repeat)
            first = first or seconds
            base = ""
            if scale == 1 and not args.no_baseline:
                uncached, _, check = timed(cluster, pods, label, cache=False)
                assert check == result, "cached and uncached runs must decide alike"
                base = f"{uncached / seconds:.1f}x"
            print(f"{label:<14} {len(cluster):>8} {result.pods:>7} {seconds:>8.2f} {fastest:>7.2f} {base:>7} "
                  f"{seconds / first:>5.1f}x {PUBLISHED_SECONDS / seconds:>11.0f}x", flush=True)


if __name__ == "__main__":
    main()
