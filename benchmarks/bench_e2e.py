"""Scheduling throughput through the real kube-scheduler (v1.36.3), with the extender and without it.

One control plane, 100 nodes of 8 GPUs. Two kinds of batch, alternated: N pods asking fractional GPUs
(Filter, Prioritize and Bind go to the extender) and N plain pods asking only CPU (the extender is not
consulted: `managedResources` says it is not interested). Each batch is created while no scheduler runs; then
kube-scheduler starts and the clock runs from its first binding to its last, read from the pods' `Scheduled`
events (microsecond `eventTime`), so pod creation and scheduler start-up are outside the measurement.

    python benchmarks/bench_e2e.py [--pods 1000 --nodes 100 --rounds 2]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testbed.build_control_plane import build  # noqa: E402
from testbed.controlplane import ControlPlane  # noqa: E402
from extender.testing.factories import gpu_pod  # noqa: E402


def batch(cp: ControlPlane, namespace: str, n: int, gpu: bool, seed: int) -> list[str]:
    rng = random.Random(seed)
    names = []
    for i in range(n):
        pod = gpu_pod(f"p{i:05d}", namespace=namespace, units=rng.choice([10, 20, 25, 30, 50]) if gpu else None)
        del pod["metadata"]["uid"]
        pod["spec"]["schedulerName"] = "fracgpu-scheduler"
        pod["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "10m"}
        cp.core.create_namespaced_pod(namespace, pod)
        names.append(pod["metadata"]["name"])
    return names


def scheduled_times(cp: ControlPlane, namespace: str, n: int, timeout: float = 600) -> list[float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = [e for e in cp.core.list_namespaced_event(namespace).items if e.reason == "Scheduled"]
        if len(events) >= n:
            return sorted((e.event_time or e.first_timestamp).timestamp() for e in events)
        time.sleep(0.5)
    raise SystemExit(f"only {len(events)} of {n} pods scheduled in {timeout:.0f} s")


def run_round(cp: ControlPlane, label: str, n: int, gpu: bool, seed: int) -> float:
    namespace = f"bench-{label}-{seed}"
    cp.core.create_namespace({"metadata": {"name": namespace}})
    cp.core.create_namespaced_service_account(namespace, {"metadata": {"name": "default"}})
    batch(cp, namespace, n, gpu, seed)
    config = cp.scheduler_config()
    config["leaderElection"] = {"leaderElect": False}  # a fresh scheduler per batch, no lease to wait out
    # The default client limit (50 requests/s) would cap the plain pods, whose bindings and events the
    # scheduler posts itself, while the extender posts the fracgpu pods' bindings: lift it for both.
    config["clientConnection"].update(qps=1000, burst=2000)
    proc = cp.start_scheduler(config, name=f"kube-scheduler-{label}-{seed}")
    try:
        times = scheduled_times(cp, namespace, n)
    finally:
        proc.stop()
        cp.processes.pop(proc.name, None)
    for pod in cp.core.list_namespaced_pod(namespace).items:  # free the GPUs for the next round
        cp.core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
    return (len(times) - 1) / (times[-1] - times[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    bin_dir = build(log=lambda m: print(m, file=sys.stderr))
    with tempfile.TemporaryDirectory() as tmp, ControlPlane.start(Path(tmp), bin_dir) as cp:
        cp.core.create_namespaced_service_account("default", {"metadata": {"name": "default"}})
        cp.start_extender("--policy", "binpack", "--log-level", "WARNING")
        for i in range(args.nodes):
            cp.add_gpu_node(f"node-{i:03d}", gpus=8, memory_mib=81_920)
        while len(cp.extender_inspect()["nodes"]) < args.nodes:
            time.sleep(0.1)
        rates: dict[str, list[float]] = {"plain": [], "fracgpu": []}
        for r in range(args.rounds):
            for label, gpu in (("plain", False), ("fracgpu", True)):
                rate = run_round(cp, label, args.pods, gpu, seed=r)
                rates[label].append(rate)
                print(f"round {r}: {label:8s} {args.pods} pods on {args.nodes} nodes: {rate:7.1f} pods/s", flush=True)
    plain, frac = statistics.mean(rates["plain"]), statistics.mean(rates["fracgpu"])
    print(f"\nmean over {args.rounds} rounds: plain {plain:.1f} pods/s, with the extender {frac:.1f} pods/s; "
          f"cost ratio {plain / frac:.2f}x (target < 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
