"""The extender over loopback HTTP: Filter then Prioritize of 500 node names against a 5,000-node x 8-GPU
static cluster (40,000 pods placed), served by `fracgpu-extender serve` in its own process.

Prints p50/p99 per call and per Filter+Prioritize pair, sustained pairs/s with several calls in flight, and
the same pair answered in-process (no HTTP) as the baseline of the ratio. Figures are printed, not asserted.

    python benchmarks/bench_http.py [--nodes 5000 --pods 40000 --pairs 400 --in-flight 4 --policy binpack
                                     --warmup 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_filter import build_cluster  # noqa: E402

from extender.api.service import Extender  # noqa: E402
from extender.api.settings import load_settings  # noqa: E402
from extender.api.static import StaticCluster  # noqa: E402
from extender.api.wire import ExtenderArgs, encode_priorities  # noqa: E402
from extender.core.assignment import to_annotation  # noqa: E402
from extender.core.settings import ASSIGNMENT_ANNOTATION  # noqa: E402
from extender.testing.factories import gpu_node, gpu_pod  # noqa: E402


def cluster_file(nodes: int, pods: int, seed: int) -> tuple[Path, list[dict], list[dict]]:
    ledger = build_cluster(nodes, 8, pods, seed)
    node_dicts = [gpu_node(name, gpus=8, memory_mib=81_920) for name in ledger.node_names()]
    pod_dicts = []
    for assignment in ledger.assignments():
        pod = gpu_pod(assignment.name, namespace="bench", uid=assignment.pod_uid,
                      units=assignment.containers[0].gpus[0].units * len(assignment.containers[0].gpus))
        pod["spec"]["nodeName"] = assignment.node
        pod["metadata"]["annotations"][ASSIGNMENT_ANNOTATION] = to_annotation(assignment)
        pod["status"] = {"phase": "Running"}
        pod_dicts.append(pod)
    path = Path(tempfile.mkdtemp()) / "cluster.json"
    path.write_bytes(orjson.dumps({"apiVersion": "v1", "kind": "List", "items": node_dicts + pod_dicts}))
    return path, node_dicts, pod_dicts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1e3


async def drive(base: str, payloads: list[bytes], in_flight: int) -> tuple[list[float], list[float], list[float], float]:
    filter_t, prio_t, pair_t = [], [], []
    headers = {"Content-Type": "application/json"}
    queue = list(payloads)

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            payload = queue.pop()
            start = time.perf_counter()
            async with session.post(f"{base}/filter", data=payload, headers=headers) as r:
                result = orjson.loads(await r.read())
            mid = time.perf_counter()
            args = orjson.loads(payload)
            args["NodeNames"] = result["NodeNames"]
            async with session.post(f"{base}/prioritize", data=orjson.dumps(args), headers=headers) as r:
                await r.read()
            end = time.perf_counter()
            filter_t.append(mid - start)
            prio_t.append(end - mid)
            pair_t.append(end - start)

    async with aiohttp.ClientSession() as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(in_flight)))
        elapsed = time.perf_counter() - start
    return filter_t, prio_t, pair_t, len(payloads) / elapsed


def in_process(nodes: list[dict], pods: list[dict], warm: list[bytes], payloads: list[bytes],
               policy: str) -> list[float]:
    extender = Extender(load_settings(env={}, flags={"policy": policy}), StaticCluster([], []))
    for node in nodes:
        extender.on_node(node)
    for pod in pods:
        extender.on_pod(pod)
    samples = []
    for payload in warm + payloads:
        start = time.perf_counter()
        args = ExtenderArgs.model_validate(orjson.loads(payload))
        result = extender.filter(args)
        result.dumps()
        encode_priorities(extender.prioritize(args.model_copy(update={"node_names": result.node_names})))
        samples.append(time.perf_counter() - start)
    return samples[len(warm):]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=40_000)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--policy", default="binpack", help="the extender's --policy")
    parser.add_argument("--warmup", type=int, default=50,
                        help="pairs sent before measuring, each a new pod (1200 fills FGD's 1000-pod workload window "
                             "and the policies' per-node scores: the steady state)")
    args = parser.parse_args()

    path, nodes, pods = cluster_file(args.nodes, args.pods, args.seed)
    print(f"static cluster: {len(nodes)} nodes x 8 GPUs, {len(pods)} pods ({path.stat().st_size / 1e6:.0f} MB JSON); "
          f"policy {args.policy}")
    rng = random.Random(args.seed)
    names = [n["metadata"]["name"] for n in nodes]
    payloads = []
    for i in range(args.warmup + args.pairs):
        pod = gpu_pod(f"probe-{i}", namespace="bench", units=rng.choice([10, 25, 50, 100]), memory_mib=4000)
        pod["metadata"]["resourceVersion"] = str(1000 + i)  # as kube-scheduler sends pods: with their version
        payloads.append(orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": rng.sample(names, args.candidates)}))

    warm, payloads = payloads[:args.warmup], payloads[args.warmup:]
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen([sys.executable, "-m", "extender.api.cli", "serve", "--cluster", str(path),
                               "--listen", f"127.0.0.1:{port}", "--log-level", "WARNING", "--policy", args.policy],
                              env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        started = time.perf_counter()

        async def ready() -> None:
            async with aiohttp.ClientSession() as session:
                while True:
                    try:
                        async with session.get(f"{base}/readyz") as r:
                            if r.status == 200:
                                return
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)

        asyncio.run(asyncio.wait_for(ready(), 300))
        print(f"server ready (ledger synced) after {time.perf_counter() - started:.1f} s")
        asyncio.run(drive(base, warm, 1))  # new pods, not measured
        f, p, pair, _ = asyncio.run(drive(base, payloads, 1))
        print(f"\nsequential, {args.candidates} candidates per call, {len(payloads)} pairs:")
        print(f"  filter      p50 {pct(f, .5):.2f} ms  p99 {pct(f, .99):.2f} ms")
        print(f"  prioritize  p50 {pct(p, .5):.2f} ms  p99 {pct(p, .99):.2f} ms")
        print(f"  pair        p50 {pct(pair, .5):.2f} ms  p99 {pct(pair, .99):.2f} ms  -> {1 / statistics.fmean(pair):.0f} pairs/s")
        cpu_before = cpu_seconds(server.pid)
        _, _, pair_c, rate = asyncio.run(drive(base, payloads, args.in_flight))
        cpu_after = cpu_seconds(server.pid)
        print(f"sustained with {args.in_flight} in flight: {rate:.0f} filter+prioritize pairs/s "
              f"(pair p99 {pct(pair_c, .99):.2f} ms)")
        if cpu_before is not None and cpu_after is not None:
            per_pair = (cpu_after - cpu_before) / len(payloads)
            print(f"  server CPU per pair {per_pair * 1e3:.2f} ms: one core serves at most {1 / per_pair:.0f} pairs/s "
                  f"(the client shares this machine's {os.cpu_count()} cores)")
    finally:
        server.terminate()
        server.wait(10)
    base_samples = in_process(nodes, pods, warm, payloads, args.policy)
    print(f"\nbaseline, the same pairs in-process (no HTTP, no server): mean {statistics.fmean(base_samples) * 1e3:.2f} ms")
    print(f"ratio HTTP pair / in-process pair (mean): {statistics.fmean(pair) / statistics.fmean(base_samples):.2f}x")


if __name__ == "__main__":
    main()
