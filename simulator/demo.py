"""`fracgpu-demo`: place a seeded synthetic workload on a synthetic cluster with every policy, compare them, and
print the per-GPU table of one policy with the reasons the pods that did not fit are waiting.

    python -m simulator.demo [--pods 60] [--seed 7] [--policy binpack]
"""

from __future__ import annotations

import argparse
from collections import Counter

from extender.core import CoreSettings, Ledger, evaluate, make_policy, parse_pod
from extender.core.loading import build_ledger
from extender.core.policies import POLICIES, Policy
from extender.core.resources import PodRequest
from extender.core.workload import pod_shape, target_workload

from .compare import format_table
from .synthetic import synthetic_cluster, synthetic_workload


def place_all(settings: CoreSettings, nodes: list[dict], requests: list[PodRequest], policy: Policy):
    """Schedule each pod once, in order, on the best node: what kube-scheduler does with the extender. Returns
    the ledger and, per pod left pending, why it did not fit when it was tried (each reason once, the one the
    most nodes gave first)."""
    ledger, _ = build_ledger(settings, nodes, [])
    names = ledger.node_names()
    pending = []
    for request in requests:
        evaluation = evaluate(ledger, request, names, policy)
        best = evaluation.best()
        if best is None:
            reasons = Counter([*evaluation.failed.values(), *evaluation.unresolvable.values()])
            pending.append((request, [reason for reason, _ in reasons.most_common()]))  # commonest first
            continue
        ledger.reserve(evaluation.placement(best).assignment(request, policy.name))
        ledger.commit(request.uid)
    return ledger, pending


def summary_row(ledger: Ledger, placed: int, pending: int) -> dict:
    gpus = [g for n in ledger.node_names() for g in ledger.gpu_table(n)]
    offered = sum(g["unitsOffered"] for g in gpus)
    used = sum(g["unitsUsed"] for g in gpus)
    idle = sum(1 for g in gpus if g["unitsUsed"] == 0)
    return {"placed": placed, "pending": pending, "units": f"{used}/{offered} ({used / offered:.0%})",
            "idle GPUs": f"{idle}/{len(gpus)}"}


def print_table(rows: list[dict]) -> None:
    print(format_table(rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fracgpu placement demo on a synthetic cluster")
    parser.add_argument("--pods", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--policy", default="binpack", choices=sorted(POLICIES))
    args = parser.parse_args(argv)

    settings = CoreSettings(reserve_mib=512)
    nodes = synthetic_cluster(settings=settings)
    requests = [parse_pod(p, settings) for p in synthetic_workload(args.pods, seed=args.seed, settings=settings)]
    print(f"fracgpu demo: {len(requests)} pods (seed {args.seed}) onto {len(nodes)} nodes "
          f"(2 x 8 H100 NVLink, 2 x 4 T4 PCIe, 1 x 4 A100 in pool team-a); unitsPerGpu={settings.units_per_gpu}, "
          f"reserve {settings.reserve_mib} MiB per GPU\n")

    workload = target_workload(shape for shape in map(pod_shape, requests) if shape is not None)
    rows = []
    for name in sorted(POLICIES):
        policy = make_policy(name, seed=args.seed, workload=workload)
        ledger, pending = place_all(settings, nodes, requests, policy)
        rows.append({"policy": policy.describe(), **summary_row(ledger, len(requests) - len(pending), len(pending))})
    print_table(rows)

    policy = make_policy(args.policy, seed=args.seed, workload=workload)
    ledger, pending = place_all(settings, nodes, requests, policy)
    print(f"\nper GPU under {policy.describe()}:")
    table = []
    for node in ledger.node_names():
        for gpu in ledger.gpu_table(node):
            table.append({
                "node": node, "gpu": gpu["index"], "model": gpu["model"].replace("NVIDIA ", "")[:16],
                "units": f"{gpu['unitsUsed']}/{gpu['unitsOffered']}",
                "memory MiB": f"{gpu['memoryChargedMiB']}/{gpu['memoryUsableMiB']}",
                "pool": gpu["pool"] or "-", "pods": len(gpu["pods"]),
                "holders": ", ".join(p.split("/")[1] for p in gpu["pods"][:3]) + (" ..." if len(gpu["pods"]) > 3 else ""),
            })
    print_table(table)
    if pending:
        print(f"\n{len(pending)} pod(s) pending under {policy.describe()}; why the first three wait:")
        for request, reasons in pending[:3]:
            print(f"  {request.key}: " + "; ".join(reasons))


if __name__ == "__main__":
    main()
