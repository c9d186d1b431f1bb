"""``fracgpu-sim compare``: policies × seeds of the inflation experiment, on every core, with a report.

Writes to ``--out`` (default ``sim-results/``):

* ``results.csv``: one row per (policy, seed): pods, placed, failed, unallocated GPUs at 100% arrived load,
  failed pods by reason;
* ``curves.csv``: allocation and fragmentation at every 1% of arrived load, per (policy, seed);
* ``report.md``: the table (mean, standard deviation, min and max over seeds, the paper's figure beside it)
  and the settings that produced it (trace, ratio, tie-break, node order, seeds);
* ``allocation.png``, ``fragmentation.png`` (mean curves over seeds), ``unallocated.png`` (bar per policy with
  the seed spread as error bars and the paper's figures as markers).
"""

from __future__ import annotations

import csv
import gc
import os
import statistics
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from .experiments import InflationResult, inflation
from .policy_specs import PolicySpec, paper_figures
from .trace import load_nodes, load_pods

_TRACE: dict = {}


@dataclass(frozen=True)
class Settings:
    nodes: str | None = None  # None = the embedded default trace
    pods: str | None = None
    ratio: float = 1.3
    tie_break: str = "first"
    node_order: str = "shuffled"
    coverage: float = 0.95


def _load(settings: Settings):
    key = (settings.nodes, settings.pods)
    if key not in _TRACE:
        _TRACE.clear()
        _TRACE[key] = (load_nodes(settings.nodes), load_pods(settings.pods))
        settle()
    return _TRACE[key]


def settle() -> None:
    """Once the trace is loaded for the rest of the process: collect, then freeze what is left (the imported
    libraries' objects, about 69,000, and the default trace's, 17,000) out of the cyclic collector's reach. Else a
    full collection walks them all again: 43-49 ms inside a best-fit run, in 3 of 6 runs measured."""
    gc.collect()
    gc.freeze()


def run_one(spec: PolicySpec, seed: int, settings: Settings) -> InflationResult:
    nodes, pods = _load(settings)
    return inflation(nodes, pods, spec, seed=seed, ratio=settings.ratio, tie_break=settings.tie_break,
                     node_order=settings.node_order, coverage=settings.coverage, name=spec.label)


def run_all(specs: Sequence[PolicySpec], seeds: Sequence[int], settings: Settings, *, jobs: int | None = None,
            progress: bool = True) -> list[InflationResult]:
    """Every (policy, seed), in parallel processes; results in (policy, seed) order whatever finished first."""
    tasks = [(spec, seed) for spec in specs for seed in seeds]
    _load(settings)  # bad files fail here, once, with their message (forked workers inherit the loaded trace)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    results: dict[tuple[str, int], InflationResult] = {}
    bar = tqdm(total=len(tasks), unit="run", disable=not progress, desc="inflation")
    if jobs == 1:
        for spec, seed in tasks:
            results[spec.label, seed] = run_one(spec, seed, settings)
            bar.set_postfix_str(f"{spec.label} seed {seed}")
            bar.update()
    else:
        with ProcessPoolExecutor(jobs) as pool:
            futures = {pool.submit(run_one, spec, seed, settings): (spec.label, seed) for spec, seed in tasks}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.set_postfix_str(f"{futures[future][0]} seed {futures[future][1]}")
                bar.update()
    bar.close()
    return [results[spec.label, seed] for spec, seed in tasks]


@dataclass
class Summary:
    policy: str
    runs: int
    mean: float
    stdev: float
    low: float
    high: float
    failed: float  # mean failed pods per run
    paper: float | None

    @property
    def difference(self) -> float | None:
        return None if self.paper is None else self.mean - self.paper


def summarise(results: Sequence[InflationResult], paper: dict[str, float]) -> list[Summary]:
    """Per policy over its seeds; ``paper``: the published figure per policy label, where there is one."""
    by_policy: dict[str, list[InflationResult]] = {}
    for r in results:
        by_policy.setdefault(r.policy, []).append(r)
    out = []
    for policy, runs in by_policy.items():
        values = [r.unallocated_at_100 for r in runs]
        out.append(Summary(policy, len(runs), statistics.fmean(values), statistics.pstdev(values), min(values),
                           max(values), statistics.fmean(sum(r.failed.values()) for r in runs),
                           paper.get(policy)))
    return out


def table_rows(summaries: Sequence[Summary]) -> list[dict]:
    rows = []
    for s in summaries:
        rows.append({
            "policy": s.policy, "runs": s.runs, "unallocated % (mean)": f"{s.mean:.2f}",
            "stdev": f"{s.stdev:.2f}", "min-max": f"{s.low:.2f}-{s.high:.2f}",
            "paper": "" if s.paper is None else f"{s.paper:.2f}",
            "difference": "" if s.difference is None else f"{s.difference:+.2f}",
            "failed pods (mean)": f"{s.failed:.0f}",
        })
    return rows


def format_table(rows: Sequence[dict]) -> str:
    headers = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(r[h]).ljust(w) for h, w in zip(headers, widths)) for r in rows]
    return "\n".join(lines)


def write_rows(path: Path, rows: Sequence[dict]) -> None:
    """A table (dicts with the same keys, in order) as a CSV file with a header."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows: Sequence[dict]) -> str:
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(r[h]) for h in headers) + " |" for r in rows]
    return "\n".join(lines)


def write_outputs(results: Sequence[InflationResult], specs: Sequence[PolicySpec], seeds: Sequence[int],
                  settings: Settings, out: Path, *, plots: bool = True) -> list[Summary]:
    out.mkdir(parents=True, exist_ok=True)
    reasons = sorted({reason for r in results for reason in r.failed})
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["policy", "seed", "tie_break", "pods", "placed", "failed", "unallocated_at_100_pct",
                         *(f"failed:{reason}" for reason in reasons)])
        for r in results:
            writer.writerow([r.policy, r.seed, r.tie_break, r.pods, r.placed, sum(r.failed.values()),
                             f"{r.unallocated_at_100:.4f}", *(r.failed.get(reason, 0) for reason in reasons)])
    with open(out / "curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["policy", "seed", "arrived_pct", "allocated_pct", "fragmented_pct", "frag_ratio_pct"])
        for r in results:
            for c in r.curve:
                writer.writerow([r.policy, r.seed, f"{c.arrived_pct:.3f}", f"{c.allocated_pct:.4f}",
                                 f"{c.fragmented_pct:.4f}", f"{c.frag_ratio_pct:.4f}"])
    summaries = summarise(results, paper_figures(settings.pods))
    failed = Counter()
    for r in results:
        failed.update({(r.policy, reason): n for reason, n in r.failed.items()})
    lines = [
        "# fracgpu-sim compare",
        "",
        f"Inflation to {settings.ratio}x of GPU capacity, seeds {', '.join(map(str, seeds))}; "
        f"tie-break `{settings.tie_break}`, node order `{settings.node_order}`, target workload coverage "
        f"{settings.coverage}; trace: {settings.pods or 'embedded openb default'}, nodes: "
        f"{settings.nodes or 'embedded openb GPU nodes'}.",
        "",
        "Unallocated GPUs (% of capacity) when the arrived GPU requests reach 100% of capacity; `paper` is the "
        "FGD paper's simulator (Weng et al., USENIX ATC '23), mean of seeds 42-51.",
        "",
        markdown_table(table_rows(summaries)),
        "",
        "Failed pods by reason (total over seeds):",
        "",
        *(f"- {policy}: {reason}: {n}" for (policy, reason), n in sorted(failed.items())),
        "",
        "Policies: " + "; ".join(f"`{s.label}` = {s.policy}({', '.join(f'{k}={v}' for k, v in s.params.items())})"
                                 for s in specs),
    ]
    if plots:
        lines += ["", "![allocation](allocation.png)", "![fragmentation](fragmentation.png)",
                  "![unallocated](unallocated.png)"]
        plot(results, summaries, out)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return summaries


def mean_curves(results: Sequence[InflationResult]) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """Per policy, (arrived %, mean allocated %, mean fragmentation ratio %) at every 1% step all runs reached."""
    grouped: dict[str, list[InflationResult]] = {}
    for r in results:
        grouped.setdefault(r.policy, []).append(r)
    curves = {}
    for policy, runs in grouped.items():
        steps = min(len(r.curve) for r in runs)
        arrived = [float(i + 1) for i in range(steps)]
        allocated = [statistics.fmean(r.curve[i].allocated_pct for r in runs) for i in range(steps)]
        frag = [statistics.fmean(r.curve[i].frag_ratio_pct for r in runs) for i in range(steps)]
        curves[policy] = (arrived, allocated, frag)
    return curves


def plot(results: Sequence[InflationResult], summaries: Sequence[Summary], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = mean_curves(results)
    for name, index, ylabel in (("allocation", 1, "GPU allocation (% of capacity)"),
                                ("fragmentation", 2, "fragmented free GPU units (% of free)")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for policy, curve in curves.items():
            ax.plot(curve[0], curve[index], label=policy)
        if index == 1:
            ax.plot([0, 100], [0, 100], color="grey", linestyle=":", linewidth=1, label="ideal")
            ax.set_xlim(0, max(max(c[0]) for c in curves.values()))
        ax.set_xlabel("arrived GPU requests (% of capacity)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = range(len(summaries))
    means = [s.mean for s in summaries]
    errors = [[s.mean - s.low for s in summaries], [s.high - s.mean for s in summaries]]
    ax.bar(xs, means, yerr=errors, capsize=4, color="#4c72b0", label="fracgpu-sim (mean, min-max over seeds)")
    paper = [(i, s.paper) for i, s in enumerate(summaries) if s.paper is not None]
    if paper:
        ax.scatter([i for i, _ in paper], [p for _, p in paper], color="#dd8452", marker="D", zorder=3,
                   label="paper's simulator")
    for i, m in zip(xs, means):
        ax.annotate(f"{m:.2f}", (i, m), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    ax.set_xticks(list(xs), [s.policy for s in summaries], rotation=20)
    ax.set_ylabel("unallocated GPUs at 100% arrived load (%)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "unallocated.png", dpi=120)
    plt.close(fig)
