"""What the hand-off costs on a real node: a burst of 40 pods of mixed shapes, creation to Running, with the
hand-off and without it, alternated.

One control plane (etcd, kube-apiserver, kube-scheduler v1.36.3 with the extender as binder) and one real node
(kubelet v1.36.3, containerd and runc: ``testbed/node.py``) with the 8 GPUs of the ``h100x8-nvswitch`` fixture.

* **with the hand-off**: the pods go through deploy/'s admission webhook (the extender over TLS, called by the
  API server), which adds the downward-API environment and the ``nvidia`` RuntimeClass; the Binding carries the
  hand-off annotations; kubelet resolves the environment when it starts each container.
* **without**: the same pods, created with the RuntimeClass already set, in a namespace no webhook serves:
  no admission call and no environment to resolve. Both use the same NVIDIA runtime stand-in.

Per burst: creation to Running for each pod (this script creates the 40 pods back to back and polls every
50 ms), p50, p95 and max; and the bind rate, from the first to the last pod's ``Scheduled`` event (microsecond
``eventTime``): binds are concurrent, with no per-node lock. Every container's report is checked against its
assignment after each burst with the hand-off (a mismatch stops the run).

    python benchmarks/bench_node.py [--rounds 4]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from kubernetes import utils  # noqa: E402

from extender.core.settings import ASSIGNMENT_ANNOTATION  # noqa: E402
from testbed.build_control_plane import build  # noqa: E402
from testbed.controlplane import DEPLOY, ControlPlane  # noqa: E402
from testbed.node import RUNTIME_HANDLER, Node  # noqa: E402
from testbed.pods import burst, parse_report  # noqa: E402

NODE = "bench-node"


def run_burst(cp: ControlPlane, node: Node, namespace: str, handoff: bool) -> dict:
    core = cp.core
    bodies = burst(namespace, NODE)
    created, uids = {}, set()
    for body in bodies:
        if not handoff:
            body["spec"]["runtimeClassName"] = RUNTIME_HANDLER
        uids.add(core.create_namespaced_pod(namespace, body).metadata.uid)
        created[body["metadata"]["name"]] = time.monotonic()
    running: dict[str, float] = {}
    deadline = time.monotonic() + 300
    while len(running) < len(bodies):
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(running)} of {len(bodies)} pods Running after 300 s")
        now = time.monotonic()
        for pod in core.list_namespaced_pod(namespace).items:
            if pod.status.phase == "Running" and pod.metadata.name not in running:
                running[pod.metadata.name] = now
            elif pod.status.phase == "Failed":
                raise SystemExit(f"pod {pod.metadata.name} failed: {pod.status.message}")
        time.sleep(0.05)
    latencies = sorted(running[name] - created[name] for name in created)
    events = sorted((e.event_time or e.first_timestamp).timestamp() for e in core.list_namespaced_event(namespace).items
                    if e.reason == "Scheduled" and e.involved_object.uid in uids)  # this burst's, not a past one's
    if handoff:
        check(cp, node, namespace)
    return {"p50": statistics.median(latencies), "p95": latencies[int(0.95 * (len(latencies) - 1))],
            "max": latencies[-1], "binds_per_s": (len(events) - 1) / (events[-1] - events[0])}


def check(cp: ControlPlane, node: Node, namespace: str) -> None:
    """Every GPU container saw exactly its assignment's GPUs (the e2e test's check, briefly)."""
    for pod in cp.core.list_namespaced_pod(namespace).items:
        assignment = json.loads(pod.metadata.annotations[ASSIGNMENT_ANNOTATION])
        for entry in assignment["containers"]:
            deadline = time.monotonic() + 30
            while (report := parse_report(node.container_output(namespace, pod.metadata.name, pod.metadata.uid,
                                                                entry["name"]) or "")) is None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{pod.metadata.name}/{entry['name']}: no report")
                time.sleep(0.1)
            want = ",".join(g["uuid"] for g in entry["gpus"])
            if report["env"]["NVIDIA_VISIBLE_DEVICES"] != want or sorted(report["devices"].values()) != sorted(
                    g["uuid"] for g in entry["gpus"]):
                raise SystemExit(f"{pod.metadata.name}/{entry['name']}: saw {report}, assigned {want}")


def clear(cp: ControlPlane, namespace: str) -> None:
    for pod in cp.core.list_namespaced_pod(namespace).items:
        cp.core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
    deadline = time.monotonic() + 120
    while cp.core.list_namespaced_pod(namespace).items:
        if time.monotonic() > deadline:
            raise SystemExit(f"pods of {namespace} still there after 120 s")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    bin_dir = build(log=lambda m: print(m, file=sys.stderr))
    with tempfile.TemporaryDirectory() as tmp, ControlPlane.start(Path(tmp) / "cp", bin_dir) as cp:
        for doc in yaml.safe_load_all((DEPLOY / "55-runtimeclass.yaml").read_text()):
            utils.create_from_dict(cp.api_client(), doc)
        for namespace in ("with-handoff", "without"):
            cp.core.create_namespace({"metadata": {"name": namespace}})
            cp.core.create_namespaced_service_account(namespace, {"metadata": {"name": "default"}})
        cp.start_extender("--policy", "binpack")
        config = cp.scheduler_config()
        config["clientConnection"].update(qps=1000, burst=2000)
        cp.start_scheduler(config)
        (Path(tmp) / "node").mkdir()
        with Node.start(cp, Path(tmp) / "node", name=NODE, fixture="h100x8-nvswitch",
                        log=lambda m: print(m, file=sys.stderr)) as node, \
                cp.admission_webhook("with-handoff", "--runtime-class", RUNTIME_HANDLER):
            results: dict[str, list[dict]] = {"with the hand-off": [], "without": []}
            for round_ in range(args.rounds):
                order = [("with the hand-off", "with-handoff", True), ("without", "without", False)]
                for label, namespace, handoff in order if round_ % 2 == 0 else order[::-1]:
                    result = run_burst(cp, node, namespace, handoff)
                    results[label].append(result)
                    print(f"round {round_ + 1}, {label}: creation to Running p50 {result['p50']:.2f} s, p95 "
                          f"{result['p95']:.2f} s, max {result['max']:.2f} s; {result['binds_per_s']:.0f} binds/s",
                          file=sys.stderr)
                    clear(cp, namespace)
                    node.wait_idle()  # the next burst does not share the machine with this one's teardown
    print(f"\n40 pods of mixed shapes at once on one node, {args.rounds} rounds alternated (range over rounds):\n")
    print("| | creation to Running, p50 | p95 | max | binds/s |")
    print("|---|---|---|---|---|")
    for label, rows in results.items():
        cells = [f"{min(r[k] for r in rows):.2f}–{max(r[k] for r in rows):.2f} s" for k in ("p50", "p95", "max")]
        rate = f"{min(r['binds_per_s'] for r in rows):.0f}–{max(r['binds_per_s'] for r in rows):.0f}"
        print(f"| {label} | {' | '.join(cells)} | {rate} |")
    ratio = [a["p50"] / b["p50"] for a, b in zip(results["with the hand-off"], results["without"])]
    print(f"\np50 with / without, per round: {', '.join(f'{r:.2f}' for r in ratio)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
