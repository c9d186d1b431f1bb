"""Static mode: the cluster is a file, exactly what ``kubectl get nodes,pods -o yaml`` (or ``-o json``) prints.

For demos, tests and dry runs. Binding a pod updates the in-memory pod (``spec.nodeName`` and the
annotations, as the API server would) and reports it to the sink like a watch event would.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import orjson
import yaml

from .source import BindError, ClusterSink, object_key


class ClusterFileError(ValueError):
    pass


def read_cluster_file(path: Path) -> tuple[list[dict], list[dict]]:
    """Nodes and pods of a ``v1`` List (YAML or JSON). Raises :class:`ClusterFileError` saying what is wrong."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ClusterFileError(f"cluster file {path}: cannot read: {exc.strerror}") from None
    try:
        data = orjson.loads(text) if text.lstrip()[:1] in (b"{", b"[") else yaml.safe_load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise ClusterFileError(f"cluster file {path}: not valid YAML or JSON: {exc}") from None
    if isinstance(data, dict) and data.get("kind") == "List" or isinstance(data, dict) and "items" in data:
        items = data.get("items") or []
    elif isinstance(data, list):
        items = data
    else:
        raise ClusterFileError(f"cluster file {path}: expected a v1 List with items (kubectl get nodes,pods -o yaml)")
    nodes, pods = [], []
    for position, item in enumerate(items):
        kind = item.get("kind") if isinstance(item, dict) else None
        if kind == "Node":
            nodes.append(item)
        elif kind == "Pod":
            pods.append(item)
        else:
            raise ClusterFileError(f"cluster file {path}: items[{position}] is {kind!r}, expected Node or Pod")
    return nodes, pods


class StaticCluster:
    def __init__(self, nodes: list[dict], pods: list[dict]) -> None:
        self.nodes = {name: n for n in nodes if (name := object_key(n, "name", "nodes")) is not None}
        self.pods = {}
        for pod in pods:
            name = object_key(pod, "name", "pods")
            if name is not None:
                self.pods[(pod["metadata"].get("namespace") or "default", name)] = pod
        self._sink: ClusterSink | None = None
        self.dry_run: dict[tuple[str, str], dict] = {}  # bindings of pods the file does not hold

    @classmethod
    def from_file(cls, path: Path) -> "StaticCluster":
        return cls(*read_cluster_file(path))

    async def run(self, sink: ClusterSink) -> None:
        self._sink = sink
        for node in self.nodes.values():
            sink.on_node(node)
        for pod in self.pods.values():
            sink.on_pod(pod)
        sink.on_synced()
        await asyncio.Event().wait()  # nothing changes on its own; run until cancelled

    def add_pod(self, pod: dict) -> None:
        """Create a pod (a test or demo submitting work)."""
        self.pods[(pod["metadata"].get("namespace") or "default", pod["metadata"]["name"])] = pod
        if self._sink is not None:
            self._sink.on_pod(pod)

    async def close(self) -> None:
        pass

    async def catch_up(self) -> bool:
        return False  # the in-memory ledger is the whole truth here

    async def get_pod(self, namespace: str, name: str) -> dict | None:
        pod = self.pods.get((namespace, name))
        return copy.deepcopy(pod) if pod is not None else None

    async def bind(self, *, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]) -> None:
        pod = self.pods.get((namespace, name))
        if pod is None:  # a dry run: the scheduler places pods the file does not hold; the binding is recorded
            if (namespace, name) in self.dry_run:  # apart from them (the extender's ledger holds its charges)
                raise BindError(f"pod {namespace}/{name} is already bound to "
                                f"{self.dry_run[(namespace, name)]['node']}", conflict=True)
            if node not in self.nodes:
                raise BindError(f"node {node} not found")
            self.dry_run[(namespace, name)] = {"uid": uid, "node": node, "annotations": dict(annotations)}
            return
        if uid and pod["metadata"].get("uid") != uid:
            raise BindError(f"pod {namespace}/{name} ({uid}) not found", conflict=True)
        bound = (pod.get("spec") or {}).get("nodeName")
        if bound:
            raise BindError(f"pod {namespace}/{name} is already bound to {bound}", conflict=True)
        if node not in self.nodes:
            raise BindError(f"node {node} not found")
        pod.setdefault("spec", {})["nodeName"] = node
        pod["metadata"].setdefault("annotations", {}).update(annotations)
        if self._sink is not None:
            self._sink.on_pod(pod)
