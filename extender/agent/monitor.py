"""The agent's usage loop: read GPU processes, attribute them to pods, flag misuse, export and publish it.

Every ``interval_s`` the monitor reads NVML's processes (:mod:`.usage`), maps them to pods through their cgroups
and this node's pods, and then

* serves the result as Prometheus metrics (:class:`UsageCollector`, on the agent's ``/metrics``);
* records a Warning event on a pod when one of its containers starts to use a GPU it was not assigned or more
  memory than its share (once per episode, and for the same container, GPU and kind at most once per
  ``event_every_s``: memory hovering about the share does not flood the namespace's events);
* publishes a summary in the ConfigMap ``fracgpu-usage-<node>`` of the agent's namespace, which ``kubectl
  fracgpu top`` reads. It is written when a container appears or goes, a flag changes, or some memory figure
  moved by ``memory_threshold_mib``; otherwise at most every ``publish_every_s`` (utilisation alone moves all the
  time). Usage is kept off the Node object: a Node update makes the extender recompute that node.

The node's pods are listed (field selector on this node, from the API server's cache) at the start and when a
process of an unknown pod or container shows up, at most once per ``relist_s``; what a list did not explain (a
pod deleted while the driver still holds its process, a static pod) does not make it list again. Pods of the
agent's own namespace (the MPS daemon's, whose server is every MPS client's GPU process) count as no pod.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .publish import describe_api_error
from .usage import OVER_MEMORY, Attribution, ContainerUsage, PodInfo, attribute, pod_info, read_cgroups, read_processes

log = logging.getLogger("fracgpu.agent.usage")

USAGE_KEY = "usage.json"
USAGE_COMPONENT = "gpu-usage"  # app.kubernetes.io/component of the usage ConfigMaps
REASONS = {OVER_MEMORY: "GPUMemoryOverShare", "unassigned-gpu": "GPUNotAssigned"}


class UsageApi(Protocol):
    def get(self, name: str) -> dict: ...
    def list_pods(self, node: str) -> list[dict]: ...
    def create_event(self, namespace: str, body: dict) -> None: ...
    def apply_configmap(self, namespace: str, body: dict) -> None: ...


@dataclass(frozen=True)
class MonitorSettings:
    namespace: str = "fracgpu-node"   # where the usage ConfigMap is written (the agent's own)
    proc_root: Path = Path("/proc")
    interval_s: float = 10.0
    relist_s: float = 10.0
    memory_threshold_mib: int = 256
    publish_every_s: float = 60.0
    event_every_s: float = 600.0


def usage_configmap_name(node: str) -> str:
    name = f"fracgpu-usage-{node}"
    return name if len(name) <= 253 else f"fracgpu-usage-{hashlib.sha256(node.encode()).hexdigest()[:16]}"


class UsageMonitor:
    def __init__(self, nvml: Any, api: UsageApi, node: str, settings: MonitorSettings | None = None, *,
                 node_uid: str | None = None, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.nvml = nvml
        self.api = api
        self.node = node
        self.node_uid = node_uid
        self.settings = settings or MonitorSettings()
        self.monotonic = monotonic
        self.registry = CollectorRegistry()
        self.flags = Counter("fracgpu_agent_gpu_flags_total", "Containers newly flagged, by kind (an event each)",
                             ["kind"], registry=self.registry)
        self.pod_lists = Counter("fracgpu_agent_pod_lists_total", "Lists of this node's pods",
                                 registry=self.registry)
        self.registry.register(UsageCollector(self))
        self.last: Attribution | None = None
        self.gpus: dict[int, str] = {}
        self._samples: dict[int, int] = {}
        self._pods: dict[str, PodInfo] = {}
        self._listed_at: float | None = None
        self._system: set[str] = set()        # UIDs of the pods of the agent's namespace
        self._unresolved: set[tuple[str, str]] = set()  # (pod UID, container ID) the last list did not explain
        self._flagged: set[tuple[tuple[str, str, str], str]] = set()
        self._evented: dict[tuple[tuple[str, str, str], str], float] = {}  # flag -> when its last event was
        self._stop = threading.Event()
        self._published: dict | None = None
        self._published_at = 0.0
        self._problems: list[str] = []

    # ------------------------------------------------------------------ one round
    def observe(self) -> Attribution:
        reading = read_processes(self.nvml, self._samples)
        if reading.problems != self._problems:
            for problem in reading.problems:
                log.warning("NVML: %s", problem)
            self._problems = reading.problems
        cgroups = read_cgroups(self.settings.proc_root, (p.pid for p in reading.processes))
        if self._listed_at is None:
            self._list_pods()
        attribution = attribute(reading, cgroups, self._pods, self._system)
        self._unresolved &= attribution.unknown
        if attribution.unknown - self._unresolved and self._may_relist() and self._list_pods():
            attribution = attribute(reading, cgroups, self._pods, self._system)
            self._unresolved = set(attribution.unknown)
        self._flag(attribution.containers)
        self.gpus, self.last = reading.gpus, attribution  # on /metrics once its events are recorded
        self._publish(attribution)
        return attribution

    def run(self, stop: threading.Event) -> None:
        self._stop = stop  # checked between API calls, so that SIGTERM is not held up by a round
        while not stop.is_set():
            try:
                self.observe()
            except Exception as exc:  # the API server away: metrics keep the last reading; try next round
                log.warning("usage round failed: %s", describe_api_error(exc))
            stop.wait(self.settings.interval_s)

    # ------------------------------------------------------------------ pods
    def _may_relist(self) -> bool:
        return self._listed_at is None or self.monotonic() - self._listed_at >= self.settings.relist_s

    def _list_pods(self) -> bool:
        """Refresh the node's pods; on failure keep those known (their processes stay attributed) and say so."""
        self._listed_at = self.monotonic()
        try:
            pods = self.api.list_pods(self.node)
        except Exception as exc:
            log.warning("cannot list the pods of node %s: %s", self.node, describe_api_error(exc))
            return False
        self.pod_lists.inc()
        self._pods, self._system = {}, set()
        for pod in pods:
            info = pod_info(pod)
            if info.namespace == self.settings.namespace:
                self._system.add(info.uid)
                continue
            if info.problem:
                log.warning("%s", info.problem)
            self._pods[info.uid] = info
        return True

    # ------------------------------------------------------------------ events
    def _flag(self, rows: list[ContainerUsage]) -> None:
        now = {(row.key, row.violation): row for row in rows if row.violation}
        clock = self.monotonic()
        for key, row in now.items():
            if key in self._flagged:
                continue
            self.flags.labels(row.violation).inc()
            message = describe(row)
            log.warning("pod %s/%s: %s", row.namespace, row.pod, message)
            last = self._evented.get(key)
            if (last is not None and clock - last < self.settings.event_every_s) or self._stop.is_set():
                continue
            self._evented[key] = clock
            try:
                self.api.create_event(row.namespace, self._event(row, message))
            except Exception as exc:
                log.warning("cannot record the event on pod %s/%s: %s", row.namespace, row.pod, exc)
        self._flagged = set(now)
        self._evented = {k: t for k, t in self._evented.items() if clock - t < self.settings.event_every_s}

    def _event(self, row: ContainerUsage, message: str) -> dict:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{row.pod}.", "namespace": row.namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": row.namespace, "name": row.pod,
                               "uid": row.uid, "fieldPath": self._pods[row.uid].field_paths.get(
                                   row.container, f"spec.containers{{{row.container}}}")},
            "type": "Warning", "reason": REASONS[row.violation], "message": message,
            "source": {"component": "fracgpu-agent", "host": self.node},
            "reportingComponent": "fracgpu.io/agent", "reportingInstance": self.node,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }

    # ------------------------------------------------------------------ the usage ConfigMap
    def summary(self, attribution: Attribution) -> dict:
        return {
            "node": self.node,
            "gpus": [{"index": index, "uuid": uuid, "unattributedMiB": attribution.unattributed_mib.get(index, 0)}
                     for index, uuid in sorted(self.gpus.items())],
            "containers": [{**asdict(row), "flag": row.violation} for row in attribution.containers],
        }

    def _publish(self, attribution: Attribution) -> None:
        summary = self.summary(attribution)
        due = self.monotonic() - self._published_at >= self.settings.publish_every_s
        if summary == self._published or not (due or self._material(summary)) or self._stop.is_set():
            return
        body = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": usage_configmap_name(self.node), "namespace": self.settings.namespace,
                         "labels": {"app.kubernetes.io/name": "fracgpu-agent",
                                    "app.kubernetes.io/component": USAGE_COMPONENT},
                         "annotations": {"fracgpu.io/node": self.node}},
            "data": {USAGE_KEY: json.dumps({**summary, "readAt": datetime.now(timezone.utc).isoformat(
                timespec="seconds")}, separators=(",", ":"))},
        }
        if self.node_uid is None:
            self.node_uid = (self.api.get(self.node).get("metadata") or {}).get("uid") or ""
        if self.node_uid:  # deleted with its node
            body["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": self.node,
                                                    "uid": self.node_uid}]
        self.api.apply_configmap(self.settings.namespace, body)
        self._published, self._published_at = summary, self.monotonic()

    def _material(self, summary: dict) -> bool:
        """A container came or went, a flag changed, or a memory figure moved by the threshold."""
        old = self._published
        if old is None or len(old["gpus"]) != len(summary["gpus"]):
            return True
        threshold = self.settings.memory_threshold_mib
        if any(abs(a["unattributedMiB"] - b["unattributedMiB"]) >= threshold
               for a, b in zip(old["gpus"], summary["gpus"])):
            return True
        before = {(c["uid"], c["container"], c["uuid"]): c for c in old["containers"]}
        after = {(c["uid"], c["container"], c["uuid"]): c for c in summary["containers"]}
        if before.keys() != after.keys():
            return True
        return any(before[k]["flag"] != c["flag"] or abs((before[k]["used_mib"] or 0) - (c["used_mib"] or 0)) >= threshold
                   for k, c in after.items())


def describe(row: ContainerUsage) -> str:
    gpu = f"GPU {row.gpu} ({row.uuid})"
    used = f"{row.used_mib:,} MiB" if row.used_mib is not None else "an unknown amount of memory"
    if row.violation == OVER_MEMORY:
        return f"container {row.container} holds {used} of {gpu}, more than its share of {row.share_mib:,} MiB"
    return f"container {row.container} runs on {gpu}, which fracgpu did not assign to it (it holds {used})"


class UsageCollector(Collector):
    """The monitor's last reading as gauges, read when scraped."""

    def __init__(self, monitor: UsageMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["node", "namespace", "pod", "container", "gpu", "uuid"]
        used = GaugeMetricFamily("fracgpu_pod_gpu_memory_used_mib", "GPU memory a container's processes hold",
                                 labels=labels)
        share = GaugeMetricFamily("fracgpu_pod_gpu_memory_share_mib", "The container's share of that GPU's memory",
                                  labels=labels)
        sm = GaugeMetricFamily("fracgpu_pod_gpu_sm_utilization_percent",
                               "SM utilisation of a container's processes since the last reading", labels=labels)
        processes = GaugeMetricFamily("fracgpu_pod_gpu_processes", "A container's processes on a GPU",
                                      labels=labels)
        flagged = GaugeMetricFamily("fracgpu_pod_gpu_flagged", "1 while a container misuses a GPU, by kind",
                                    labels=[*labels, "kind"])
        unattributed = GaugeMetricFamily("fracgpu_gpu_unattributed_memory_mib",
                                         "GPU memory held by processes of no pod of this node",
                                         labels=["node", "gpu", "uuid"])
        monitor = self.monitor
        attribution = monitor.last
        if attribution is not None:
            for row in attribution.containers:
                values = [monitor.node, row.namespace, row.pod, row.container, str(row.gpu), row.uuid]
                processes.add_metric(values, row.processes)
                if row.used_mib is not None:
                    used.add_metric(values, row.used_mib)
                if row.share_mib is not None:
                    share.add_metric(values, row.share_mib)
                if row.sm_percent is not None:
                    sm.add_metric(values, row.sm_percent)
                if row.violation:
                    flagged.add_metric([*values, row.violation], 1)
            for index, mib in sorted(attribution.unattributed_mib.items()):
                unattributed.add_metric([monitor.node, str(index), monitor.gpus.get(index, "")], mib)
        yield from (used, share, sm, processes, flagged, unattributed)
