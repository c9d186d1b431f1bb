"""Record every placement decision of a fixed set of simulator runs, or compare them with a saved record.

A refactoring of the core or the simulator must not change a single decision. This runs:

* the FGD paper's six policies, inflation of the default trace, seeds 42 and 43;
* every registered core policy with its defaults, seed 42;
* a replay with departures and retries (the first 60 GPU nodes, the first 1,500 pods by arrival, arrivals 200x
  faster) for each of the paper's six;

and records, per run, each placement attempt in order (pod, node or nothing, the failure reason, the GPUs taken),
the failure counters and the curves. ``save`` writes them to a JSON file; ``check`` runs again and names the first
difference of every run that changed.

    python benchmarks/decisions.py save /tmp/decisions.json [--quick]
    python benchmarks/decisions.py check /tmp/decisions.json [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import simulator.engine as engine  # noqa: E402
from simulator.compare import settle  # noqa: E402
from simulator.experiments import inflation  # noqa: E402
from simulator.replay import replay  # noqa: E402
from simulator.trace import load_openb_nodes, load_openb_pods  # noqa: E402

from simulator.policy_specs import CORE, PAPER  # noqa: E402


class Recorder:
    """Wraps ``SimCluster.place`` to log every attempt."""

    def __init__(self) -> None:
        self.log: list = []
        self._original = engine.SimCluster.place
        recorder = self

        def place(cluster, pod, uid):
            outcome = recorder._original(cluster, pod, uid)
            gpus = None
            if outcome.node is not None:
                held = cluster.ledger.assignment(uid)
                gpus = [[s.index for s in c.gpus] for c in held.containers]
            recorder.log.append([pod.name, outcome.node, outcome.reason, gpus])
            return outcome

        engine.SimCluster.place = place

    def take(self) -> list:
        log, self.log = self.log, []
        return log


def runs(quick: bool):
    nodes, pods = load_openb_nodes(), load_openb_pods()
    settle()
    seeds = (42,) if quick else (42, 43)
    for label, spec in PAPER.items():
        for seed in seeds:
            yield f"inflation {label} seed {seed}", lambda spec=spec, seed=seed: inflation(nodes, pods, spec, seed=seed)
    if not quick:
        for name, spec in CORE.items():
            yield f"inflation core:{name} seed 42", lambda spec=spec: inflation(nodes, pods, spec, seed=42)
    small_nodes = nodes[:60]
    small_pods = sorted(pods, key=lambda p: (p.arrival, p.name))[:1500]
    for label, spec in PAPER.items():
        yield f"replay {label}", lambda spec=spec: replay(small_nodes, small_pods, spec, seed=42, arrival_scale=200.0)


def summary(result) -> dict:
    out = {"placed": result.placed, "failed": dict(sorted(result.failed.items()))}
    if hasattr(result, "curve"):
        out["curve"] = [[c.arrived_pct, c.allocated_pct, c.fragmented_pct, c.frag_ratio_pct] for c in result.curve]
    else:
        out["retries"] = result.retries
        out["delays"] = result.delays
        out["timeline"] = result.timeline
    return out


def record(quick: bool) -> dict:
    recorder = Recorder()
    records = {}
    for name, run in runs(quick):
        start = time.perf_counter()
        result = run()
        entry = {"attempts": recorder.take(), **summary(result)}
        entry["sha256"] = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()
        records[name] = entry
        print(f"{name}: {len(entry['attempts'])} attempts, {time.perf_counter() - start:.1f} s", flush=True)
    return records


def first_difference(old: dict, new: dict) -> str:
    for i, (a, b) in enumerate(zip(old["attempts"], new["attempts"])):
        if a != b:
            return f"attempt {i}: was {a}, now {b}"
    if len(old["attempts"]) != len(new["attempts"]):
        return f"{len(old['attempts'])} attempts before, {len(new['attempts'])} now"
    for key in sorted(set(old) | set(new)):
        if key not in ("attempts", "sha256") and old.get(key) != new.get(key):
            return f"{key} differs"
    return "identical"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("save", "check"))
    parser.add_argument("path", type=Path)
    parser.add_argument("--quick", action="store_true", help="seed 42 of the paper's six and the replays only")
    args = parser.parse_args()
    records = record(args.quick)
    if args.mode == "save":
        args.path.write_text(json.dumps(records))
        print(f"saved {len(records)} runs to {args.path}")
        return 0
    saved = json.loads(args.path.read_text())
    changed = compared = 0
    for name, entry in records.items():
        if name not in saved:
            print(f"NEW   {name} (not in the saved record)")
            continue
        compared += 1
        if saved[name]["sha256"] != entry["sha256"]:
            changed += 1
            print(f"DIFF  {name}: {first_difference(saved[name], entry)}")
    print(f"{compared - changed} of {compared} saved runs identical")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
