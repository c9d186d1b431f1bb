"""``fracgpu-sim``: the simulator's command line.

    fracgpu-sim compare [--policies random,dot-product,...] [--seeds 42-51] [--ratio 1.3] [--tie-break first]
                        [--nodes FILE] [--pods FILE] [--jobs N] [--out sim-results]
    fracgpu-sim grid    [--traces all] [--data DIR] [--policies ...] [--seeds 42-51] [--scheduler tcp://host:8786]
                        [--jobs N] [--out sim-grid]
    fracgpu-sim replay  [--policy fgd] [--arrival-scale 100] [--seed 42] [--pods FILE] [--out sim-replay]
    fracgpu-sim synth   --pods 2000 --seed 7 --out pods.jsonl

Policies are the labels of the FGD paper's six (``random``, ``dot-product``, ``gpu-clustering``,
``gpu-packing``, ``best-fit``, ``fgd``, defined as the paper's simulator defines them), ``core:<name>`` for the
extender's definition of a policy, or ``<name>:key=value,...`` for any registered policy with parameters.
Pod files ending in ``.jsonl`` are our JSONL format, others openb CSVs; node files ending in ``.csv`` are openb
node lists, others Kubernetes Node lists (YAML or JSON). Bad input ends with a message naming the file and line,
exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .policy_specs import PAPER, resolve
from .trace import TraceError

DEFAULT_SEEDS = "42-51"


def parse_seeds(text: str) -> list[int]:
    """``42-51``, ``42,43,47`` or a count ``3`` (= 42, 43, 44)."""
    try:
        if "-" in text.strip("-"):
            low, high = (int(x) for x in text.split("-", 1))
            if high < low:
                raise ValueError
            return list(range(low, high + 1))
        if "," in text:
            return [int(x) for x in text.split(",") if x.strip()]
        count = int(text)
        if count < 1:
            raise ValueError
        return list(range(42, 42 + count))
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds: expected a range 42-51, a list 42,43 or a count 3, not {text!r}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return value


def _inflation_arguments(parser: argparse.ArgumentParser) -> None:
    """What compare and grid share: the policies, the seeds and the inflation's settings."""
    parser.add_argument("--policies", default=",".join(PAPER), help="comma-separated labels (default: the paper's six)")
    parser.add_argument("--seeds", type=parse_seeds, default=parse_seeds(DEFAULT_SEEDS))
    parser.add_argument("--ratio", type=float, default=1.3, help="inflate GPU requests to this x capacity")
    parser.add_argument("--tie-break", choices=("first", "random", "name"), default="first")
    parser.add_argument("--node-order", choices=("shuffled", "as-given"), default="shuffled")
    parser.add_argument("--nodes", help="openb node CSV or a Kubernetes Node list (default: the embedded GPU nodes)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fracgpu-sim", description="fracgpu simulator: compare placement policies offline on traces")
    sub = parser.add_subparsers(dest="command", required=True)

    compare = sub.add_parser("compare", help="inflation experiment: policies x seeds, results.csv, report.md, plots")
    _inflation_arguments(compare)
    compare.add_argument("--pods", help="openb pod CSV or our JSONL (default: the embedded openb_pod_list_default)")
    compare.add_argument("--jobs", type=positive_int, default=None, help="processes (default: all cores)")
    compare.add_argument("--out", type=Path, default=Path("sim-results"))
    compare.add_argument("--no-plots", action="store_true")
    compare.add_argument("--quiet", action="store_true", help="no progress bar")

    grid = sub.add_parser("grid", help="the inflation experiment over several traces: one trace x policy table")
    grid.add_argument("--traces", default="all",
                      help="comma-separated trace names (openb_pod_list_<name>.csv in --data) or pod files; "
                           "all: every openb pod list in --data (default)")
    grid.add_argument("--data", help="folder of openb_pod_list_<name>.csv files (default: the embedded default trace)")
    _inflation_arguments(grid)
    grid.add_argument("--jobs", type=positive_int, default=None, help="local processes (default: all cores)")
    grid.add_argument("--scheduler", help="run on this dask.distributed scheduler (tcp://host:8786) instead")
    grid.add_argument("--out", type=Path, default=Path("sim-grid"))
    grid.add_argument("--no-plots", action="store_true")
    grid.add_argument("--quiet", action="store_true", help="no progress bar")

    whatif = sub.add_parser("whatif", help="a cluster snapshot's GPU pods placed again by each policy on its nodes")
    source = whatif.add_mutually_exclusive_group(required=True)
    source.add_argument("--snapshot", help="kubectl get nodes,pods -A -o yaml (the extender's static-mode file)")
    source.add_argument("--openb", type=positive_int, metavar="PODS",
                        help="a snapshot of the embedded openb trace: its GPU nodes and its first PODS GPU pods")
    whatif.add_argument("--policies", default="binpack,best-fit,fgd,fgd-lookahead",
                        help="the extender's policies, comma-separated")
    whatif.add_argument("--units-per-gpu", type=positive_int, default=100,
                        help="the extender's --units-per-gpu (default 100; --openb: 1000, the trace's milli-GPUs)")
    whatif.add_argument("--pool-label", default="fracgpu.io/pool", help="the extender's --pool-label")
    whatif.add_argument("--anonymize", type=Path, metavar="FILE",
                        help="also write the snapshot with names replaced and what placement does not read dropped")
    whatif.add_argument("--out", type=Path, default=Path("sim-whatif"))

    replay = sub.add_parser("replay", help="the trace's own arrivals and durations, arrival rate scaled")
    replay.add_argument("--policies", default="fgd,best-fit")
    replay.add_argument("--arrival-scale", type=float, default=100.0,
                        help="arrivals come this many times faster than in the trace (durations unchanged)")
    replay.add_argument("--seed", type=int, default=42)
    replay.add_argument("--tie-break", choices=("first", "random", "name"), default="first")
    replay.add_argument("--nodes", help="openb node CSV or a Kubernetes Node list (default: the embedded GPU nodes)")
    replay.add_argument("--pods", help="openb pod CSV or our JSONL (default: the embedded trace)")
    replay.add_argument("--out", type=Path, default=Path("sim-replay"))
    replay.add_argument("--no-plots", action="store_true")

    synth = sub.add_parser("synth", help="write a seeded synthetic workload as JSONL")
    synth.add_argument("--pods", type=int, default=2000)
    synth.add_argument("--seed", type=int, default=7)
    synth.add_argument("--rate", type=float, default=1.0, help="mean arrivals per second")
    synth.add_argument("--out", type=Path, required=True)

    args = parser.parse_args(argv)
    try:
        if args.command == "compare":
            return _compare(args)
        if args.command == "grid":
            return _grid(args)
        if args.command == "whatif":
            return _whatif(args)
        if args.command == "replay":
            return _replay(args)
        return _synth(args)
    except (TraceError, ValueError, OSError) as error:
        print(f"fracgpu-sim: {error}", file=sys.stderr)
        return 2


def _specs(text: str):
    return [resolve(label.strip()) for label in text.split(",") if label.strip()]


def _compare(args) -> int:
    from .compare import Settings, format_table, run_all, table_rows, write_outputs

    specs = _specs(args.policies)
    settings = Settings(nodes=args.nodes, pods=args.pods, ratio=args.ratio, tie_break=args.tie_break,
                        node_order=args.node_order)
    results = run_all(specs, args.seeds, settings, jobs=args.jobs, progress=not args.quiet)
    summaries = write_outputs(results, specs, args.seeds, settings, args.out, plots=not args.no_plots)
    print(format_table(table_rows(summaries)))
    print(f"\nwrote {args.out}/results.csv, curves.csv, report.md" + ("" if args.no_plots else " and plots"))
    return 0


def _grid(args) -> int:
    import os
    import time

    from .compare import Settings, format_table
    from .grid import find_traces, run_grid, write_outputs

    traces = find_traces(args.traces, args.data)
    labels = [spec.label for spec in _specs(args.policies)]
    nodes = str(Path(args.nodes).resolve()) if args.nodes else None  # absolute: dask workers may run elsewhere
    settings = Settings(nodes=nodes, ratio=args.ratio, tie_break=args.tie_break, node_order=args.node_order)
    started = time.monotonic()
    cells = run_grid(traces, labels, args.seeds, settings, jobs=args.jobs, scheduler=args.scheduler,
                     progress=not args.quiet)
    workers = f"dask scheduler {args.scheduler}" if args.scheduler else f"{args.jobs or os.cpu_count()} local process(es)"
    rows = write_outputs(cells, traces, labels, args.seeds, settings, args.out, seconds=time.monotonic() - started,
                         workers=workers, plots=not args.no_plots)
    print(format_table(rows))
    print(f"\nwrote {args.out}/grid.csv, report.md" + ("" if args.no_plots else " and grid.png"))
    return 0


def _whatif(args) -> int:
    import yaml

    from extender.api.static import ClusterFileError
    from extender.core import CoreSettings

    from .compare import format_table
    from .whatif import anonymize, load_snapshot, openb_snapshot, what_if, write_outputs

    settings = CoreSettings(units_per_gpu=1000 if args.openb else args.units_per_gpu, pool_label=args.pool_label)
    path = args.snapshot
    if args.openb:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "snapshot.yaml"
        path.write_text(yaml.safe_dump(openb_snapshot(args.openb, settings), sort_keys=False))
    try:
        snapshot = load_snapshot(path, settings)
        if args.anonymize:
            from extender.api.static import read_cluster_file

            nodes, pods = read_cluster_file(Path(path))
            args.anonymize.write_text(yaml.safe_dump(anonymize(nodes, pods, settings), sort_keys=False))
    except ClusterFileError as error:
        raise ValueError(str(error)) from None
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    table = write_outputs(snapshot, what_if(snapshot, policies, settings), str(path), args.out)
    print(format_table(table))
    for warning in snapshot.warnings:
        print(f"left out: {warning}", file=sys.stderr)
    print(f"\nwrote {args.out}/whatif.csv, pending.csv, report.md" +
          (f" and {args.anonymize}" if args.anonymize else ""))
    return 0


def _replay(args) -> int:
    from .replay import format_replay, run_replays

    reports = run_replays(_specs(args.policies), args)
    print(format_replay(reports))
    print(f"\nwrote {args.out}/replay.csv, timeline.csv, report.md" + ("" if args.no_plots else " and plots"))
    return 0


def _synth(args) -> int:
    from .synthetic import synthetic_trace
    from .trace import dump_jsonl

    dump_jsonl(synthetic_trace(args.pods, seed=args.seed, rate=args.rate), args.out)
    print(f"wrote {args.pods} pods to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
