"""Publish the agent's reading to its Node, and keep it current.

Two things are written, and only when they differ from what the node already carries:

* annotation ``fracgpu.io/gpus`` (merge patch on the node), the inventory the extender reads;
* node-status extended resources ``fracgpu.io/vgpu`` and ``fracgpu.io/vgpu-memory`` in ``capacity`` and
  ``allocatable`` (merge patch on ``nodes/status``), so the scheduler's own resource check and kubelet admission
  agree with the extender.

Used memory moves a little all the time; republishing it on every refresh would write to every GPU node every
interval for nothing. A reading is republished when anything but used memory changed (a GPU, its health, a link,
the totals) or when some GPU's used memory moved by at least ``memory_threshold_mib`` from what was published.
Quantities are compared as quantities (the API server may write ``800`` back as ``800`` and ``1000`` as ``1k``).

:class:`Publisher` does one round (:meth:`Publisher.sync`) and the loop (:meth:`Publisher.run`): refresh every
``interval_s``, exponential backoff while the API server is away or refuses, return when ``stop`` is set.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from kubernetes.utils.quantity import parse_quantity

from ..core.settings import GPUS_ANNOTATION, CoreSettings
from .inventory import Report, read_inventory

log = logging.getLogger("fracgpu.agent")
_CORE = CoreSettings()


@dataclass(frozen=True)
class PublishSettings:
    units_per_gpu: int = _CORE.units_per_gpu
    vgpu_resource: str = _CORE.vgpu_resource
    memory_resource: str = _CORE.memory_resource
    interval_s: float = 30.0
    memory_threshold_mib: int = 256
    backoff_s: tuple[float, float] = (1.0, 60.0)  # first delay, cap

    def __post_init__(self) -> None:
        if self.units_per_gpu < 1:
            raise ValueError(f"units per GPU must be at least 1, not {self.units_per_gpu}")
        if self.interval_s <= 0:
            raise ValueError(f"the refresh interval must be positive, not {self.interval_s}")
        if self.memory_threshold_mib < 0:
            raise ValueError(f"the used-memory threshold must be 0 or more MiB, not {self.memory_threshold_mib}")


class NodeApi(Protocol):
    """The three calls the agent makes, on its own node only."""

    def get(self, name: str) -> dict: ...
    def patch(self, name: str, body: dict) -> None: ...
    def patch_status(self, name: str, body: dict) -> None: ...


@dataclass(frozen=True)
class Patches:
    metadata: dict | None = None  # body for the node
    status: dict | None = None    # body for nodes/status

    def __bool__(self) -> bool:
        return self.metadata is not None or self.status is not None


def plan(node: dict, report: Report, settings: PublishSettings) -> Patches:
    """The patches that bring ``node`` (a Node as JSON) in line with ``report``; empty when it already is."""
    want = report.annotation(settings.units_per_gpu)
    have = ((node.get("metadata") or {}).get("annotations") or {}).get(GPUS_ANNOTATION)
    metadata = None
    if not _same_reading(have, want, settings.memory_threshold_mib):
        metadata = {"metadata": {"annotations": {GPUS_ANNOTATION: want}}}

    totals = report.totals(settings.units_per_gpu)
    resources = {settings.vgpu_resource: str(totals["vgpu"]), settings.memory_resource: str(totals["vgpu-memory"])}
    status = node.get("status") or {}
    stale = any(not _same_quantity((status.get(field) or {}).get(name), value)
                for field in ("capacity", "allocatable") for name, value in resources.items())
    status_patch = {"status": {"capacity": resources, "allocatable": resources}} if stale else None
    return Patches(metadata, status_patch)


def _same_quantity(have: Any, want: str) -> bool:
    if have is None:
        return False
    try:
        return parse_quantity(have) == parse_quantity(want)
    except ValueError:
        return False


def _same_reading(have: str | None, want: str, threshold_mib: int) -> bool:
    """Equal but for used memory, and no GPU's used memory moved by ``threshold_mib`` or more."""
    if have == want:
        return True
    if have is None:
        return False
    try:
        old, new = json.loads(have), json.loads(want)
        old_gpus, new_gpus = old.pop("gpus"), new.pop("gpus")
        if old != new or len(old_gpus) != len(new_gpus):
            return False
        for a, b in zip(old_gpus, new_gpus):
            used_a, used_b = a.pop("usedMemoryMiB", 0), b.pop("usedMemoryMiB", 0)
            if a != b or abs(used_a - used_b) >= threshold_mib:
                return False
        return True
    except (ValueError, KeyError, TypeError, AttributeError):
        return False  # not our JSON any more (hand-edited, corrupt): write ours back


class Publisher:
    def __init__(self, nvml: Any, api: NodeApi, node_name: str, settings: PublishSettings | None = None,
                 *, describe: Callable[[Exception], str] = str) -> None:
        self.nvml = nvml
        self.api = api
        self.node_name = node_name
        self.settings = settings or PublishSettings()
        self.describe = describe
        self.patches = 0
        self._problems: list[str] | None = None

    def sync(self) -> Patches:
        """Read the GPUs, read the node, write what differs. API errors propagate."""
        report = read_inventory(self.nvml)
        if report.problems != self._problems:
            for problem in report.problems:
                log.warning("NVML: %s", problem)
            self._problems = report.problems
        node = self.api.get(self.node_name)
        patches = plan(node, report, self.settings)
        if patches.metadata is not None:
            self.api.patch(self.node_name, patches.metadata)
            self.patches += 1
        if patches.status is not None:
            self.api.patch_status(self.node_name, patches.status)
            self.patches += 1
        if patches:
            totals = report.totals(self.settings.units_per_gpu)
            log.info("published %s: %d GPUs, %d offered units, %d MiB", self.node_name, len(report.gpus),
                     totals["vgpu"], totals["vgpu-memory"])
        return patches

    def run(self, stop: threading.Event, wait: Callable[[float], Any] | None = None) -> None:
        """Refresh until ``stop`` is set. ``wait(seconds)`` sleeps (returning early once stop is set)."""
        wait = wait or stop.wait
        first, cap = self.settings.backoff_s
        delay = first
        while not stop.is_set():
            try:
                self.sync()
            except Exception as exc:  # the API server away, refusing, or timing out: keep trying
                log.warning("cannot publish to node %s: %s; retrying in %.1f s", self.node_name,
                            self.describe(exc), delay)
                wait(delay)
                delay = min(delay * 2, cap)
                continue
            delay = first
            wait(self.settings.interval_s)


class KubeNodeApi:
    """:class:`NodeApi` and :class:`.monitor.UsageApi` through the official client, with a timeout on every call so SIGTERM is never stuck."""

    def __init__(self, core: Any, timeout_s: float = 15.0) -> None:
        self.core = core
        self.timeout = timeout_s

    @classmethod
    def connect(cls, kubeconfig: str | None) -> "KubeNodeApi":
        from kubernetes import client

        from ..kube.config import kube_configuration

        configuration = kube_configuration(kubeconfig)
        configuration.retries = 0  # our loop retries, with backoff
        return cls(client.CoreV1Api(client.ApiClient(configuration)))

    def get(self, name: str) -> dict:
        response = self.core.read_node(name, _preload_content=False, _request_timeout=self.timeout)
        return json.loads(response.data)

    def patch(self, name: str, body: dict) -> None:
        self.core.patch_node(name, body, _content_type="application/merge-patch+json",
                             _preload_content=False, _request_timeout=self.timeout)

    def patch_status(self, name: str, body: dict) -> None:
        self.core.patch_node_status(name, body, _content_type="application/merge-patch+json",
                                    _preload_content=False, _request_timeout=self.timeout)

    # the usage monitor's calls (monitor.UsageApi)
    def list_pods(self, node: str) -> list[dict]:
        response = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}", resource_version="0",
                                                         _preload_content=False, _request_timeout=self.timeout)
        return json.loads(response.data).get("items") or []

    def create_event(self, namespace: str, body: dict) -> None:
        self.core.create_namespaced_event(namespace, body, _preload_content=False, _request_timeout=self.timeout)

    def apply_configmap(self, namespace: str, body: dict) -> None:
        self.core.patch_namespaced_config_map(
            body["metadata"]["name"], namespace, body, field_manager="fracgpu-agent", force=True,
            _content_type="application/apply-patch+yaml", _preload_content=False, _request_timeout=self.timeout)


def describe_api_error(exc: Exception) -> str:
    """One line an operator can act on, for what the official client raises."""
    status = getattr(exc, "status", None)
    if status == 404:
        return "the node does not exist (is NODE_NAME the node's name?)"
    if status == 403:
        return "forbidden: the agent's ServiceAccount needs get/patch on nodes, patch on nodes/status, list on " \
               "pods, create on events and create/patch on ConfigMaps of its namespace (deploy/50-agent.yaml)"
    if status is not None:
        reason = getattr(exc, "reason", "") or ""
        return f"HTTP {status} {reason}".strip()
    return f"{type(exc).__name__}: {exc}"
