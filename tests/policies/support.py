"""Shared set-ups for the per-policy tests: a small extender-style node, and simulator-style nodes with host CPU."""

from __future__ import annotations

from extender.core import CoreSettings, Ledger, evaluate, make_policy, parse_pod, place
from extender.core.loading import build_ledger
from extender.testing.factories import gpu_node, gpu_pod
from simulator.trace import SETTINGS, SimPod

S = CoreSettings()


def node_with_used_gpu0(used: bool) -> Ledger:
    """Node n, 2 GPUs x 16000 MiB, no reserve, unitsPerGpu 100 (200 units and 32000 MiB in all); with ``used``,
    one pod of 50 units and 4000 MiB already on GPU 0."""
    ledger, _ = build_ledger(S, [gpu_node("n", gpus=2, memory_mib=16000)], [])
    if used:
        request = parse_pod(gpu_pod("used", units=50, memory_mib=4000), S)
        placement = place(ledger, request, "n", make_policy("first-fit"))
        ledger.reserve(placement.assignment(request, "first-fit"))
    return ledger


def score_and_gpu(policy: str, used: bool, units: int, memory_mib: int, **params) -> tuple[float, int]:
    """The score of node n (:func:`node_with_used_gpu0`) for a pod asking ``units`` and ``memory_mib``, and
    the GPU it would get."""
    ledger = node_with_used_gpu0(used)
    request = parse_pod(gpu_pod("p", units=units, memory_mib=memory_mib), S)
    evaluation = evaluate(ledger, request, ["n"], make_policy(policy, **params))
    gpus = [s.index for c in evaluation.placement("n").containers for s in c.gpus]
    assert len(gpus) == 1
    return evaluation.score_of("n"), gpus[0]


def sim_pod(name: str, cpu: int, *, gpus: int = 0, milli: int = 0) -> SimPod:
    return SimPod(name=name, cpu_milli=cpu, memory_mib=0, gpu_count=gpus, gpu_milli=milli)


def sim_ledger(*nodes) -> Ledger:
    ledger = Ledger(SETTINGS)
    for node in nodes:
        ledger.upsert_node(node)
    return ledger


def sim_score(ledger: Ledger, pod: SimPod, policy, node: str) -> float:
    return evaluate(ledger, pod.request(pod.name), [node], policy).score_of(node)


def sim_hold(ledger: Ledger, pod: SimPod, node: str, policy) -> None:
    request = pod.request(pod.name)
    ledger.reserve(evaluate(ledger, request, [node], policy).placement(node).assignment(request, "test"))
