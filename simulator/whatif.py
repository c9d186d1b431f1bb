"""``fracgpu-sim whatif``: a live cluster's GPU pods placed again, by each policy, on its own nodes.

The input is a snapshot of the cluster, what ``kubectl get nodes,pods -A -o yaml`` prints (the extender's
static-mode format). Its pods that ask for fracgpu resources are placed one at a time, in creation order, on an
empty copy of its nodes, as the extender places them: each policy's Filter and Prioritize, its choice of GPUs,
its bookkeeping. Per policy: pods placed, pods left pending and why (the scheduler's reason), the GPU units
allocated, the idle GPUs, and the stranded units (free units on GPUs in use that are fewer than the smallest
per-GPU request among the snapshot's pods: no pod of this cluster could use them).

``anonymize`` rewrites a snapshot so that it can be shared: node, namespace, pod, container and pool names become
``node-1``, ``ns-1``, ``pod-001``, ``c-1``, ``pool-1``, GPU UUIDs ``GPU-node-1-0``, creation times a sequence in
the same order, and everything placement does not read is dropped (other labels and annotations, taints, images,
commands, env, volumes, other resources, other fields of the GPU inventory).
"""

from __future__ import annotations

import copy
import csv
import json
from datetime import datetime, timedelta, timezone
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

from extender.api.static import read_cluster_file
from extender.core import CoreSettings, parse_pod
from extender.core.errors import InvalidRequest
from extender.core.loading import build_ledger
from extender.core.policies import make_policy
from extender.core.resources import PodRequest
from extender.core.settings import (
    GPU_COUNT_ANNOTATION,
    GPU_MODEL_ANNOTATION,
    GPUS_ANNOTATION,
    POLICY_ANNOTATION,
    POOL_LABEL,
    SHARING_ANNOTATION,
)
from extender.core.workload import pod_shape, target_workload

from .compare import markdown_table, write_rows
from .demo import place_all


@dataclass
class Snapshot:
    nodes: list[dict]
    pods: list[PodRequest]  # the GPU pods, in creation order
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (namespace/name, why it cannot be placed)
    warnings: list[str] = field(default_factory=list)  # nodes the ledger could not take, and why


@dataclass
class WhatIf:
    policy: str
    placed: int
    pending: Counter  # reason -> pods
    allocated_pct: float
    idle_gpus: int
    gpus: int
    stranded_pct: float
    pending_pods: list[tuple[str, str]] = field(default_factory=list)  # (namespace/name, reason)


def load_snapshot(path: str | Path, settings: CoreSettings) -> Snapshot:
    """Nodes, and the GPU pods in creation order (then namespace and name); a pod whose request is not valid is
    listed in ``skipped`` with the reason, not placed."""
    nodes, pods = read_cluster_file(Path(path))
    gpu_pods, skipped = [], []
    for pod in pods:
        metadata = pod.get("metadata") or {}
        key = f"{metadata.get('namespace') or 'default'}/{metadata.get('name')}"
        try:
            request = parse_pod(_unbound(pod), settings)
        except InvalidRequest as exc:
            skipped.append((key, str(exc)))
            continue
        if request.wants_gpu:
            gpu_pods.append((str(metadata.get("creationTimestamp") or ""), key, request))
    gpu_pods.sort(key=lambda entry: entry[:2])
    _, report = build_ledger(settings, nodes, [])
    return Snapshot(nodes, [request for *_, request in gpu_pods], skipped, report.warnings)


def _unbound(pod: dict) -> dict:
    """The pod as it was created: no node, no assignment (placement decides them again)."""
    pod = copy.deepcopy(pod)
    (pod.get("spec") or {}).pop("nodeName", None)
    annotations = (pod.get("metadata") or {}).get("annotations")
    if isinstance(annotations, dict):
        for key in [k for k in annotations if k == "fracgpu.io/assignment" or ".containers.fracgpu.io/" in k]:
            del annotations[key]
    return pod


def what_if(snapshot: Snapshot, policies: Sequence[str], settings: CoreSettings) -> list[WhatIf]:
    shapes = [shape for request in snapshot.pods if (shape := pod_shape(request)) is not None]
    workload = target_workload(shapes) or None
    smallest = min((c.units for r in snapshot.pods for c in r.containers if c.units > 0), default=1)
    results = []
    for name in policies:
        policy = make_policy(name, workload=workload) if workload else make_policy(name)
        ledger, waiting = place_all(settings, snapshot.nodes, snapshot.pods, policy)
        nodes = ledger.node_names()
        pending = [(f"{r.namespace}/{r.name}", reasons[0] if reasons else "no GPU node") for r, reasons in waiting]
        gpus = [g for node in nodes for g in ledger.gpu_table(node) if g["unitsOffered"] > 0]
        offered = sum(g["unitsOffered"] for g in gpus) or 1
        stranded = sum(free for g in gpus if g["unitsUsed"] and 0 < (free := g["unitsOffered"] - g["unitsUsed"]) < smallest)
        results.append(WhatIf(
            policy=name, placed=len(snapshot.pods) - len(pending), pending=Counter(r for _, r in pending),
            allocated_pct=100.0 * sum(g["unitsUsed"] for g in gpus) / offered,
            idle_gpus=sum(1 for g in gpus if g["unitsUsed"] == 0), gpus=len(gpus),
            stranded_pct=100.0 * stranded / offered, pending_pods=pending))
    return results


def rows(results: Iterable[WhatIf]) -> list[dict]:
    return [{
        "policy": r.policy, "placed": r.placed, "pending": sum(r.pending.values()),
        "GPU units allocated %": f"{r.allocated_pct:.2f}", "idle GPUs": f"{r.idle_gpus}/{r.gpus}",
        "stranded units %": f"{r.stranded_pct:.2f}",
        "commonest pending reason": r.pending.most_common(1)[0][0] if r.pending else "",
    } for r in results]


def write_outputs(snapshot: Snapshot, results: Sequence[WhatIf], source: str, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    table = rows(results)
    write_rows(out / "whatif.csv", table)
    with open(out / "pending.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["policy", "pod", "reason"])
        for r in results:
            writer.writerows([r.policy, pod, reason] for pod, reason in r.pending_pods)
    lines = ["# fracgpu-sim whatif", "",
             f"Snapshot {source}: {len(snapshot.nodes)} nodes, {len(snapshot.pods)} GPU pods placed again in creation "
             "order on empty nodes, one policy at a time. Stranded: free units on GPUs in use that are fewer than the "
             "smallest per-GPU request among these pods.", "", markdown_table(table)]
    for r in results:
        if r.pending:
            lines += ["", f"Pending under {r.policy}:", ""]
            lines += [f"- {n} pod(s): {reason}" for reason, n in r.pending.most_common()]
    if snapshot.warnings:
        lines += ["", "Nodes left out (as the extender would leave them out):", ""]
        lines += [f"- {warning}" for warning in snapshot.warnings]
    if snapshot.skipped:
        lines += ["", "Pods not placed by any policy (their request is not valid):", ""]
        lines += [f"- {pod}: {why}" for pod, why in snapshot.skipped]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return table


# ---------------------------------------------------------------------------------------------------- anonymize
_GPU_FIELDS = ("index", "uuid", "model", "memoryMiB", "usedMemoryMiB", "healthy", "mig", "numaNode")
_POD_ANNOTATIONS = (GPU_COUNT_ANNOTATION, GPU_MODEL_ANNOTATION, POLICY_ANNOTATION, SHARING_ANNOTATION)


def anonymize(nodes: list[dict], pods: list[dict], settings: CoreSettings) -> dict:
    """A ``v1`` List of the nodes and pods with every name replaced (nodes, namespaces, pods, containers, pools,
    GPU UUIDs), creation times replaced by a sequence in the same order, and only what placement reads kept."""
    key = settings.pool_label
    node_alias = {n["metadata"]["name"]: f"node-{i}" for i, n in enumerate(nodes, 1)}
    pools: dict[str, str] = {}

    def pool(value: object) -> str:
        return pools.setdefault(str(value), f"pool-{len(pools) + 1}")

    items = []
    for node in nodes:
        metadata = node.get("metadata") or {}
        alias = node_alias[metadata["name"]]
        labels = {k: v for k, v in (metadata.get("labels") or {}).items() if k.startswith(("nvidia.com/", "fracgpu.io/"))}
        labels.pop(POOL_LABEL, None)
        if (metadata.get("labels") or {}).get(key):
            labels[key] = pool(metadata["labels"][key])
        annotations = {}
        if GPUS_ANNOTATION in (metadata.get("annotations") or {}):
            annotations[GPUS_ANNOTATION] = _gpus(metadata["annotations"][GPUS_ANNOTATION], alias)
        resources = {k: v for k, v in ((node.get("status") or {}).get("allocatable") or {}).items()
                     if k in (settings.vgpu_resource, settings.memory_resource)}
        items.append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": alias, "labels": labels,
                      "annotations": annotations}, "status": {"capacity": resources, "allocatable": resources}})
    ordered = sorted(pods, key=lambda p: (str((p.get("metadata") or {}).get("creationTimestamp") or ""),
                                          (p.get("metadata") or {}).get("namespace") or "default",
                                          str((p.get("metadata") or {}).get("name"))))
    namespaces: dict[str, str] = {}
    width = len(str(len(ordered)))
    start = datetime(2000, 1, 1, tzinfo=timezone.utc)
    for index, pod in enumerate(ordered, 1):
        metadata = pod.get("metadata") or {}
        namespace = namespaces.setdefault(metadata.get("namespace") or "default", f"ns-{len(namespaces) + 1}")
        spec = pod.get("spec") or {}
        names: dict[str, str] = {}
        new_spec: dict = {key_: [_container(c, names, settings) for c in spec.get(key_) or []]
                          for key_ in ("initContainers", "containers") if spec.get(key_)}
        if spec.get("schedulerName"):
            new_spec["schedulerName"] = spec["schedulerName"]
        try:
            chosen = parse_pod(pod, settings).pool
        except InvalidRequest:
            chosen = None
        if chosen:  # the pod's pool however it named it, as the one form placement reads plainly
            new_spec["nodeSelector"] = {key: pool(chosen)}
        annotations = {k: v for k, v in (metadata.get("annotations") or {}).items() if k in _POD_ANNOTATIONS}
        items.append({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": f"pod-{index:0{width}d}", "namespace": namespace, "uid": f"uid-{index}",
            "creationTimestamp": (start + timedelta(seconds=index)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "annotations": annotations}, "spec": new_spec})
    return {"apiVersion": "v1", "kind": "List", "items": items}


def _container(container: dict, names: dict[str, str], settings: CoreSettings) -> dict:
    alias = names.setdefault(str(container.get("name")), f"c-{len(names) + 1}")
    kept = (settings.vgpu_resource, settings.memory_resource, "cpu", "memory")
    resources = {part: {k: v for k, v in values.items() if k in kept}
                 for part, values in (container.get("resources") or {}).items()
                 if part in ("requests", "limits") and isinstance(values, dict)}
    out = {"name": alias, "resources": resources}
    if "restartPolicy" in container:  # a sidecar (an init container that keeps running)
        out["restartPolicy"] = container["restartPolicy"]
    return out


def _gpus(raw: str, alias: str) -> str:
    """The inventory annotation with only the fields placement reads, and UUIDs named after the node's alias."""
    try:
        data = json.loads(raw)
    except (TypeError, ValueError):
        return raw  # not ours to repair: placement will report it
    if not isinstance(data, dict):
        return raw
    gpus = [{k: g[k] for k in _GPU_FIELDS if k in g} | {"uuid": f"GPU-{alias}-{g.get('index', '')}"}
            for g in data.get("gpus") or [] if isinstance(g, dict)]
    return json.dumps({**{k: v for k, v in data.items() if k in ("version", "unitsPerGpu", "links")}, "gpus": gpus},
                      separators=(",", ":"))


# ---------------------------------------------------------------------------------------------------- openb
def openb_snapshot(pods: int, settings: CoreSettings) -> dict:
    """A snapshot built from the embedded openb trace: its 1213 GPU nodes, and its first ``pods`` GPU pods by
    creation time as fracgpu pods (``gpu_milli`` as units of ``settings.units_per_gpu``; several whole GPUs with
    the GPU-count annotation). Past the trace's 7,064 GPU pods (98% of the GPUs' units), it starts again from the
    first, as copies created later."""
    from .trace import load_openb_nodes, load_openb_pods, node_objects

    snapshot = node_objects(load_openb_nodes())
    trace = sorted((p for p in load_openb_pods() if p.gpu_count), key=lambda p: (p.arrival or 0.0, p.name))
    last = max(p.arrival or 0.0 for p in trace)
    chosen = [replace(trace[i % len(trace)], name=f"{trace[i % len(trace)].name}-copy-{i // len(trace)}",
                      arrival=(trace[i % len(trace)].arrival or 0.0) + (last + 1) * (i // len(trace)))
              if i >= len(trace) else trace[i] for i in range(pods)]
    for p in chosen:
        annotations = {GPU_COUNT_ANNOTATION: str(p.gpu_count)} if p.gpu_count > 1 else {}
        units = p.gpu_count * p.gpu_milli * settings.units_per_gpu // 1000 or 1  # the pod's total
        snapshot["items"].append({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": p.name, "namespace": "openb", "uid": f"uid-{p.name}", "annotations": annotations,
            "creationTimestamp": f"{p.arrival or 0:012.0f}"},
            "spec": {"schedulerName": "fracgpu-scheduler", "containers": [
                {"name": "main", "resources": {"limits": {settings.vgpu_resource: str(units)}}}]}})
    return snapshot
