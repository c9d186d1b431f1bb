"""The *replay* experiment: the trace's own arrivals and durations, with the arrival rate scaled.

Arrivals come ``arrival_scale`` times faster than in the trace (the real timestamps load the openb cluster to
about 1%); durations are the trace's. A pod that does not fit waits; whenever a pod completes, the pending pods
are retried at that instant in arrival order (kube-scheduler moves unschedulable pods back to its active queue on
a pod deletion; its backoff timers are not modelled). Within one retry round, once a pod of some shape fails the
others of the same shape are not tried again (the same shape fits nowhere the first did not).

Reported per policy: queueing delay (placement time - arrival, p50/p99/max, simulated seconds), pods placed,
pods still pending at the end, retries, GPU allocation over time (time-weighted mean while the trace arrives,
and peak) and pending pods over time.
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .engine import ARRIVE, COMPLETE, RETRY, EventQueue, SimCluster, TieBreak, percent
from .experiments import PolicyFactory, workload_of
from .trace import SimPod, load_nodes, load_pods


@dataclass
class ReplayResult:
    policy: str
    seed: int
    arrival_scale: float
    pods: int
    placed: int = 0
    retries: int = 0  # placement attempts of pods that had waited
    delays: list[float] = field(default_factory=list)  # per placed pod
    failed: Counter = field(default_factory=Counter)  # first refusal of each pod that had to wait, by reason
    timeline: list[tuple[float, float, int]] = field(default_factory=list)  # (time, allocated %, pending)
    pending_at_end: int = 0
    last_arrival: float = 0.0  # simulated time of the last arrival

    def delay(self, q: float) -> float:
        return float(np.percentile(self.delays, q)) if self.delays else float("nan")

    def mean_allocation(self) -> float:
        """Time-weighted mean GPU allocation (%) while the trace arrives (first to last arrival): over the whole
        run the long-running pods' tail would dominate, and the mean would not depend on the arrival scale."""
        end = self.last_arrival
        points = [(t, a) for t, a, _ in self.timeline if t <= end]
        if not points:
            return 0.0
        times = np.array([t for t, _ in points] + [end])
        alloc = np.array([a for _, a in points])
        spans = np.diff(times)
        return float((alloc * spans).sum() / spans.sum()) if spans.sum() > 0 else float(alloc[-1])


def replay(nodes, pods: Sequence[SimPod], make: PolicyFactory, *, seed: int, arrival_scale: float = 100.0,
           tie_break: TieBreak = "first", coverage: float = 0.95, name: str | None = None,
           observer: Callable[[float, SimCluster], None] | None = None) -> ReplayResult:
    """Replay ``pods``; ``observer(time, cluster)`` is called after every event (tests check invariants there)."""
    if not arrival_scale > 0:
        raise ValueError(f"arrival scale must be positive, not {arrival_scale}")
    timeless = sum(1 for pod in pods if pod.arrival is None)
    if timeless:
        raise ValueError(f"replay needs each pod's arrival time, and {timeless} of {len(pods)} pods have none (an "
                         f"openb trace without its creation_time column): use compare, which needs none")
    policy = make(seed, workload_of(pods, coverage))
    cluster = SimCluster(nodes, policy, rng=random.Random(seed), tie_break=tie_break)
    ordered = sorted(pods, key=lambda p: (p.arrival, p.name))
    start = ordered[0].arrival if ordered else 0.0
    result = ReplayResult(policy=name or policy.describe(), seed=seed, arrival_scale=arrival_scale, pods=len(pods),
                          last_arrival=(ordered[-1].arrival - start) / arrival_scale if ordered else 0.0)
    run = _Run(cluster, result)
    for pod in ordered:
        run.queue.push((pod.arrival - start) / arrival_scale, ARRIVE, pod)
    while run.queue:
        now, kind, event = run.queue.pop()
        if kind == ARRIVE:
            run.arrive(event, now)
        elif kind == COMPLETE:
            run.complete(event, now)
        else:
            run.retry(now)
        if observer is not None:
            observer(now, cluster)
        run.record(now)
    result.pending_at_end = len(run.pending)
    return result


class _Run:
    """One replay's moving parts: the event queue, the pods waiting, and what happens at each kind of event."""

    def __init__(self, cluster: SimCluster, result: ReplayResult) -> None:
        self.cluster = cluster
        self.result = result
        self.queue = EventQueue()
        self.arrived_at: dict[str, float] = {}
        self.pending: list[SimPod] = []
        self.retry_at: float | None = None

    def place(self, pod: SimPod, now: float, arriving: bool) -> bool:
        outcome = self.cluster.place(pod, pod.name)
        if outcome.node is None:
            if arriving:
                self.result.failed[outcome.reason] += 1  # a pod's first refusal, on arrival
            return False
        self.result.placed += 1
        self.result.delays.append(now - self.arrived_at[pod.name])
        if pod.duration is not None:
            self.queue.push(now + pod.duration, COMPLETE, pod)
        return True

    def arrive(self, pod: SimPod, now: float) -> None:
        self.arrived_at[pod.name] = now
        if not self.place(pod, now, arriving=True):
            self.pending.append(pod)

    def complete(self, pod: SimPod, now: float) -> None:
        """A pod ends; the waiting pods get one retry at this instant, however many pods end at it."""
        self.cluster.remove(pod.name)
        if self.pending and self.retry_at != now:
            self.retry_at = now
            self.queue.push(now, RETRY, None)

    def retry(self, now: float) -> None:
        """Retry the waiting pods in arrival order; once one of a shape fails, the others of that shape wait."""
        failed_shapes: set[tuple] = set()
        still = []
        for pod in self.pending:
            key = pod.shape_key
            if key in failed_shapes:
                still.append(pod)
                continue
            self.result.retries += 1
            if not self.place(pod, now, arriving=False):
                failed_shapes.add(key)
                still.append(pod)
        self.pending = still

    def record(self, now: float) -> None:
        """The timeline keeps one point per instant: the state after its last event."""
        timeline = self.result.timeline
        point = (now, percent(self.cluster.allocated, self.cluster.gpu_capacity), len(self.pending))
        if timeline and timeline[-1][0] == now:
            timeline[-1] = point
        else:
            timeline.append(point)


def run_replays(specs, args) -> list[ReplayResult]:
    nodes, pods = load_nodes(args.nodes), load_pods(args.pods)
    results = [replay(nodes, pods, spec, seed=args.seed, arrival_scale=args.arrival_scale,
                      tie_break=args.tie_break, name=spec.label) for spec in specs]
    write_replay(results, args.out, plots=not args.no_plots)
    return results


def rows(results: Sequence[ReplayResult]) -> list[dict]:
    return [{
        "policy": r.policy, "pods": r.pods, "placed": r.placed, "pending at end": r.pending_at_end,
        "waited": sum(r.failed.values()), "retries": r.retries,
        "delay p50 s": f"{r.delay(50):.1f}", "delay p99 s": f"{r.delay(99):.1f}",
        "delay max s": f"{max(r.delays, default=float('nan')):.1f}",
        "GPU alloc mean % (arrivals)": f"{r.mean_allocation():.2f}",
        "GPU alloc peak %": f"{max((a for _, a, _ in r.timeline), default=0.0):.2f}",
        "peak pending": max((p for _, _, p in r.timeline), default=0),
    } for r in results]


def format_replay(results: Sequence[ReplayResult]) -> str:
    from .compare import format_table

    scale = results[0].arrival_scale if results else 0
    return f"replay, arrivals x{scale:g}, seed {results[0].seed if results else '-'}\n" + format_table(rows(results))


def write_replay(results: Sequence[ReplayResult], out: Path, *, plots: bool = True) -> None:
    from .compare import markdown_table, write_rows

    out.mkdir(parents=True, exist_ok=True)
    table = rows(results)
    write_rows(out / "replay.csv", table)
    with open(out / "timeline.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["policy", "time_s", "allocated_pct", "pending"])
        for r in results:
            for t, a, p in r.timeline:
                writer.writerow([r.policy, f"{t:.3f}", f"{a:.4f}", p])
    lines = ["# fracgpu-sim replay", "",
             f"Trace arrivals {results[0].arrival_scale:g}x faster, durations as in the trace, seed "
             f"{results[0].seed}. Delays in simulated seconds.", "", markdown_table(table)]
    if plots:
        _plot(results, out)
        lines += ["", "![timeline](timeline.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _plot(results: Sequence[ReplayResult], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for r in results:
        hours = [t / 3600 for t, _, _ in r.timeline]
        top.step(hours, [a for _, a, _ in r.timeline], where="post", label=r.policy, linewidth=1)
        bottom.step(hours, [p for _, _, p in r.timeline], where="post", label=r.policy, linewidth=1)
    top.set_ylabel("GPU allocation (%)")
    bottom.set_ylabel("pending pods")
    bottom.set_xlabel("simulated time (hours)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "timeline.png", dpi=120)
    plt.close(fig)
