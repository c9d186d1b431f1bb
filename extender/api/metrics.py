"""Prometheus metrics of one extender: per-verb latency, decisions, rejection reasons, and per-GPU allocation.

Each app has its own registry (tests build many apps). Per-GPU gauges are read from the ledger when scraped,
not updated on every change, so they cost nothing on the filter path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..core.ledger import Ledger

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _LedgerCollector(Collector):
    def __init__(self, ledger: "Ledger") -> None:
        self.ledger = ledger

    def collect(self) -> Iterator[GaugeMetricFamily]:
        units = GaugeMetricFamily("fracgpu_gpu_allocated_units", "Units charged on a GPU", labels=["node", "gpu"])
        capacity = GaugeMetricFamily("fracgpu_gpu_capacity_units", "Units a GPU offers", labels=["node", "gpu"])
        memory = GaugeMetricFamily("fracgpu_gpu_allocated_memory_mib", "MiB charged on a GPU", labels=["node", "gpu"])
        usable = GaugeMetricFamily("fracgpu_gpu_usable_memory_mib", "MiB a GPU offers (after reserve)",
                                   labels=["node", "gpu"])
        pods = GaugeMetricFamily("fracgpu_gpu_pods", "Pods holding a share of a GPU", labels=["node", "gpu"])
        for node in self.ledger.node_names():
            for gpu in self.ledger.gpu_table(node):
                labels = [node, str(gpu["index"])]
                units.add_metric(labels, gpu["unitsUsed"])
                capacity.add_metric(labels, gpu["unitsOffered"])
                memory.add_metric(labels, gpu["memoryChargedMiB"])
                usable.add_metric(labels, gpu["memoryUsableMiB"])
                pods.add_metric(labels, len(gpu["pods"]))
        yield from (units, capacity, memory, usable, pods)


class Metrics:
    def __init__(self, ledger: "Ledger") -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("fracgpu_extender_request_seconds", "Time to answer one extender call",
                                 ["verb"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.requests = Counter("fracgpu_extender_requests_total", "Extender calls by verb and HTTP status",
                                ["verb", "status"], registry=self.registry)
        self.decisions = Counter("fracgpu_extender_decisions_total", "Decisions by verb and outcome",
                                 ["verb", "outcome"], registry=self.registry)
        self.rejections = Counter("fracgpu_extender_rejections_total", "Nodes rejected by Filter, by reason",
                                  ["reason"], registry=self.registry)
        self.refused_connections = Counter(
            "fracgpu_extender_connections_refused_total",
            "Connections closed at the connection limit: handshake-closed (one still in its TLS handshake made "
            "room), idle-closed (one without a request being handled made room), busy (all busy: the new one)",
            ["kind"], registry=self.registry)
        self.synced = Gauge("fracgpu_extender_synced", "1 once the ledger holds the cluster's state",
                            registry=self.registry)
        self.registry.register(_LedgerCollector(ledger))

    def rejected(self, reason: str, count: int) -> None:
        self.rejections.labels(reason).inc(count)
