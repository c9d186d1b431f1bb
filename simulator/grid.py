"""``fracgpu-sim grid``: the inflation experiment for policies × seeds over several traces, in one table.

Each (trace, policy, seed) is one run of :func:`simulator.compare.run_one`, so a cell of the grid is the number
``compare`` gives for that trace. The runs go to local processes, or to a ``dask.distributed`` scheduler
(``--scheduler tcp://host:8786``) whose workers have fracgpu installed and can read the trace files at the same
paths. A run is deterministic, so both give the same numbers bit for bit.

Writes to ``--out`` (default ``sim-grid/``):

* ``grid.csv``: one row per (trace, policy, seed): pods, placed, failed, unallocated GPUs at 100% arrived load;
* ``report.md``: trace × policy, the mean over seeds with its spread (population standard deviation, min-max),
  the FGD paper's published figure beside ours where it exists;
* ``grid.png``: the means per trace and policy, the seed spread as error bars and the paper's figures as marks.
"""

from __future__ import annotations

import csv
import os
import re
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tqdm import tqdm

from .compare import Settings, markdown_table, run_one
from .policy_specs import PAPER, paper_figures, resolve
from .trace import TraceError, default_path

POD_LIST = re.compile(r"openb_pod_list_(?P<name>.+)\.csv")
CONNECT_TIMEOUT_S = 10  # for reaching the dask scheduler


@dataclass(frozen=True)
class Trace:
    name: str
    path: str | None  # None: the embedded default trace


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    trace: str
    policy: str
    seed: int
    pods: int
    placed: int
    failed: int
    unallocated: float  # % of GPU capacity at 100% arrived load


def _order(name: str) -> tuple:
    """default first, then by family and the number in the name (gpushare20 before gpushare100)."""
    numbered = re.fullmatch(r"(\D*)(\d+)", name)
    return (name != "default", numbered[1], int(numbered[2])) if numbered else (name != "default", name, -1)


def find_traces(names: str, data: str | None) -> list[Trace]:
    """``names``: ``all`` (every ``openb_pod_list_<name>.csv`` in ``data``) or a comma-separated list of trace
    names (``gpushare40`` = ``data/openb_pod_list_gpushare40.csv``) and pod files. ``default`` with no
    ``data`` is the embedded default trace."""
    folder = Path(data).resolve() if data else None  # absolute paths: a dask worker may run in another folder
    if folder is not None and not folder.is_dir():
        raise TraceError(f"--data {data}: not a folder")
    if names.strip() == "all":
        if folder is None:
            return [Trace("default", None)]
        found = [m["name"] for f in folder.iterdir() if (m := POD_LIST.fullmatch(f.name))]
        if not found:
            raise TraceError(f"--data {data}: no openb_pod_list_<name>.csv in it")
        return [Trace(name, str(folder / f"openb_pod_list_{name}.csv")) for name in sorted(found, key=_order)]
    traces = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        if folder is not None and (folder / f"openb_pod_list_{name}.csv").is_file():
            traces.append(Trace(name, str(folder / f"openb_pod_list_{name}.csv")))
        elif name == "default" and folder is None:
            traces.append(Trace("default", None))
        elif Path(name).is_file():
            match = POD_LIST.fullmatch(Path(name).name)
            traces.append(Trace(match["name"] if match else Path(name).stem, str(Path(name).resolve())))
        else:
            where = f"openb_pod_list_{name}.csv in {data}" if folder else "a file (give --data for trace names)"
            raise TraceError(f"trace {name!r}: found neither {where} nor a file of that name")
    if not traces:
        raise TraceError("--traces names no trace")
    if len({t.name for t in traces}) != len(traces):
        raise TraceError("--traces names a trace twice")
    return traces


def run_cell(trace: Trace, label: str, seed: int, settings: Settings) -> Cell:
    """One run; the policy travels by label, so a worker builds it from its own registry."""
    result = run_one(resolve(label), seed, replace(settings, pods=trace.path))
    return Cell(trace.name, label, seed, result.pods, result.placed, sum(result.failed.values()),
                result.unallocated_at_100)


def run_grid(traces: Sequence[Trace], labels: Sequence[str], seeds: Sequence[int], settings: Settings, *,
             jobs: int | None = None, scheduler: str | None = None, progress: bool = True) -> list[Cell]:
    """Every (trace, policy, seed), in (trace, policy, seed) order whatever finished first."""
    for label in labels:
        resolve(label)  # an unknown policy fails here, before any work is sent
    tasks = [(trace, label, seed) for trace in traces for label in labels for seed in seeds]
    bar = tqdm(total=len(tasks), unit="run", disable=not progress, desc="grid")
    results: dict[tuple[str, str, int], Cell] = {}
    for cell in (_on_dask(tasks, settings, scheduler) if scheduler else _local(tasks, settings, jobs)):
        results[cell.trace, cell.policy, cell.seed] = cell
        bar.set_postfix_str(f"{cell.trace} {cell.policy} seed {cell.seed}")
        bar.update()
    bar.close()
    return [results[trace.name, label, seed] for trace, label, seed in tasks]


def _local(tasks: list, settings: Settings, jobs: int | None) -> Iterator[Cell]:
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    if jobs == 1:
        yield from (run_cell(*task, settings) for task in tasks)
        return
    # tasks go out in trace order, so a worker mostly finds the trace it loaded last (it keeps one)
    with ProcessPoolExecutor(jobs) as pool:
        yield from (f.result() for f in as_completed([pool.submit(run_cell, *task, settings) for task in tasks]))


def _on_dask(tasks: list, settings: Settings, address: str) -> Iterator[Cell]:
    try:
        from distributed import Client, as_completed as dask_completed
    except ImportError:
        raise ValueError("--scheduler needs dask.distributed: pip install 'fracgpu[grid]'") from None
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as error:
        raise ValueError(f"--scheduler {address}: cannot reach a dask scheduler there ({error})") from None
    with client:
        futures = [client.submit(run_cell, *task, settings, pure=False) for task in tasks]
        yield from (future.result() for future in dask_completed(futures))


# ---------------------------------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class Stats:
    mean: float
    stdev: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float]) -> "Stats":
        values = list(values)
        return cls(statistics.fmean(values), statistics.pstdev(values), min(values), max(values))


def summarise(cells: Sequence[Cell]) -> dict[tuple[str, str], Stats]:
    """(trace, policy) -> the spread of unallocated % over seeds."""
    grouped: dict[tuple[str, str], list[float]] = {}
    for cell in cells:
        grouped.setdefault((cell.trace, cell.policy), []).append(cell.unallocated)
    return {key: Stats.of(values) for key, values in grouped.items()}


def grid_rows(cells: Sequence[Cell], traces: Sequence[Trace], labels: Sequence[str]) -> list[dict]:
    """A row per trace: per policy ``mean ±stdev``, and the paper's figure as ``(paper x.xx)`` where published."""
    stats = summarise(cells)
    rows = []
    for trace in traces:
        paper = paper_figures(trace.path)
        row = {"trace": trace.name}
        for label in labels:
            s = stats[trace.name, label]
            published = f" (paper {paper[label]:.2f})" if label in paper else ""
            row[label] = f"{s.mean:.2f} ±{s.stdev:.2f}{published}"
        rows.append(row)
    return rows


def write_outputs(cells: Sequence[Cell], traces: Sequence[Trace], labels: Sequence[str], seeds: Sequence[int],
                  settings: Settings, out: Path, *, seconds: float, workers: str, plots: bool = True) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "grid.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trace", "policy", "seed", "pods", "placed", "failed", "unallocated_at_100_pct"])
        for c in cells:
            writer.writerow([c.trace, c.policy, c.seed, c.pods, c.placed, c.failed, f"{c.unallocated:.4f}"])
    rows = grid_rows(cells, traces, labels)
    stats = summarise(cells)
    spread = [{"trace": t.name, **{label: f"{stats[t.name, label].low:.2f}-{stats[t.name, label].high:.2f}"
                                   for label in labels}} for t in traces]
    lines = [
        "# fracgpu-sim grid",
        "",
        f"Unallocated GPUs (% of capacity) when the arrived GPU requests reach 100% of capacity: mean ±population "
        f"standard deviation over seeds {_seed_text(seeds)}; inflation to {settings.ratio}x, tie-break "
        f"`{settings.tie_break}`, node order `{settings.node_order}`, nodes: "
        f"{settings.nodes or 'embedded openb GPU nodes'}. `paper`: the FGD paper's simulator (Weng et al., USENIX "
        "ATC '23), mean of seeds 42-51, where published.",
        "",
        markdown_table(rows),
        "",
        "Lowest and highest over seeds:",
        "",
        markdown_table(spread),
        "",
        "Traces: " + "; ".join(f"`{t.name}` = {t.path or 'embedded openb_pod_list_default.csv'}" for t in traces),
        "",
        "Policies: " + "; ".join(f"`{label}` = {_describe(label)}" for label in labels),
        "",
        f"{len(cells)} runs in {seconds:.0f} s on {workers}.",
    ]
    if plots:
        lines += ["", "![grid](grid.png)"]
        plot(stats, traces, labels, out / "grid.png")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return rows


def _seed_text(seeds: Sequence[int]) -> str:
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _describe(label: str) -> str:
    spec = resolve(label)
    return f"{spec.policy}({', '.join(f'{k}={v}' for k, v in spec.params.items())})"


def plot(stats: dict[tuple[str, str], Stats], traces: Sequence[Trace], labels: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(traces) * max(1, len(labels)) / 3), 4.8))
    for j, label in enumerate(labels):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(traces))]
        s = [stats[t.name, label] for t in traces]
        ax.bar(xs, [x.mean for x in s], width, yerr=[[x.mean - x.low for x in s], [x.high - x.mean for x in s]],
               capsize=2, label=label)
        marks = [(x, paper_figures(t.path).get(label)) for x, t in zip(xs, traces)]
        marks = [(x, p) for x, p in marks if p is not None]
        if marks:
            ax.scatter([x for x, _ in marks], [p for _, p in marks], color="black", marker="D", s=10, zorder=3,
                       label="paper" if j == 0 else None)
    ax.set_xticks(range(len(traces)), [t.name for t in traces], rotation=20)
    ax.set_ylabel("unallocated GPUs at 100% arrived load (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


DEFAULT_POLICIES = ",".join(PAPER)
