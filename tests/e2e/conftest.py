"""Session fixtures: a real control plane (built from pinned upstream sources), the extender, kube-scheduler.

Under ``CI=true`` a control plane that cannot be built or started fails the tests with the build's own error;
elsewhere they are skipped with that error shown.
"""
from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.prerequisites import unavailable
from testbed.build_control_plane import BuildError, build
from testbed.controlplane import TENANT_USER, ControlPlane, ControlPlaneError
from extender.core.settings import ASSIGNMENT_ANNOTATION, GPUS_ANNOTATION, POOL_LABEL
from extender.testing.factories import gpu_pod

SCHEDULER = "fracgpu-scheduler"
PRIORITIES = {"low": 100, "mid": 500, "high": 1000, "pinned": 2000}


_unavailable = unavailable  # as tests import it


@contextlib.contextmanager
def started_control_plane(tmp_path_factory, name: str, **start) -> Iterator[ControlPlane]:
    """A control plane of its own (``ControlPlane.start``'s keywords), built first; unavailable if it cannot be."""
    try:
        bin_dir = build(log=lambda m: print(m, flush=True))
    except BuildError as exc:
        unavailable(f"cannot build the control plane: {exc}")
    try:
        with ControlPlane.start(tmp_path_factory.mktemp(name), bin_dir, **start) as cp:
            yield cp
    except ControlPlaneError as exc:
        unavailable(f"cannot start the control plane: {exc}")


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    with started_control_plane(tmp_path_factory, "control-plane") as cp:
        cp.core.create_namespaced_service_account("default", {"metadata": {"name": "default"}})
        from kubernetes import client

        scheduling = client.SchedulingV1Api(cp.api_client())
        for name, value in PRIORITIES.items():
            scheduling.create_priority_class({"metadata": {"name": name}, "value": value})
        kubelet = cp.fake_kubelet = FakeKubelet(cp)
        kubelet.start()
        cp.start_extender("--policy", "binpack")
        cp.start_scheduler()
        try:
            yield cp
        finally:
            kubelet.stop()


class FakeKubelet(threading.Thread):
    """What a kubelet does that scheduling depends on: finish the deletion of a terminating pod.

    Without a kubelet a pod deleted with a grace period (as the scheduler deletes preemption victims) stays
    terminating for ever; a real kubelet stops its containers and removes it. We remove it at once, except on
    the nodes in ``real_nodes``, where a real kubelet runs (``testbed/node.py``).
    """

    def __init__(self, cp: ControlPlane) -> None:
        super().__init__(daemon=True, name="fake-kubelet")
        self.cp = cp
        self.halt = threading.Event()
        self.finished: list[str] = []
        self.real_nodes: set[str] = set()

    def run(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.cp.api_client())
        while not self.halt.wait(0.2):
            try:
                pods = core.list_pod_for_all_namespaces().items
            except Exception:  # the API server may be going away at teardown
                continue
            for pod in pods:
                if pod.metadata.deletion_timestamp is not None and pod.spec.node_name not in self.real_nodes:
                    try:
                        core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
                        self.finished.append(f"{pod.metadata.namespace}/{pod.metadata.name}")
                    except Exception:
                        pass

    def stop(self) -> None:
        self.halt.set()
        self.join(5)


class Cluster:
    """One test's view: its own namespace and nodes, helpers that wait on what the API server holds."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.core = cp.core
        self.tag = uuid.uuid4().hex[:6]
        self.namespace = f"t-{self.tag}"
        self.nodes: list[str] = []
        self.core.create_namespace({"metadata": {"name": self.namespace}})
        self.core.create_namespaced_service_account(self.namespace, {"metadata": {"name": "default"}})

    # ---------------------------------------------------------------- objects
    def node(self, name: str, *, gpus: int = 2, memory_mib: int = 16_384, model: str = "NVIDIA H100 80GB HBM3",
             pool: str | None = None, cpu: str = "64", **kwargs) -> str:
        name = f"{self.tag}-{name}"
        self.cp.add_gpu_node(name, gpus=gpus, memory_mib=memory_mib, model=model, pool=pool, cpu=cpu, **kwargs)
        self.nodes.append(name)
        self.wait(lambda: name in self.inspect()["nodes"], f"the extender to see node {name}")
        return name

    def pod(self, name: str, *, node: str | None = None, priority: str | None = None, policy: str | None = None,
            cpu: str | None = None, scheduler: str = SCHEDULER, **kwargs) -> str:
        body = gpu_pod(name, namespace=self.namespace, **kwargs)
        del body["metadata"]["uid"]
        spec = body["spec"]
        spec["schedulerName"] = scheduler
        spec["terminationGracePeriodSeconds"] = 0
        if node is not None:
            spec["nodeSelector"] = {"kubernetes.io/hostname": node}
        if priority is not None:
            spec["priorityClassName"] = priority
        if policy is not None:
            body["metadata"]["annotations"]["fracgpu.io/policy"] = policy
        if cpu is not None:
            spec["containers"][0]["resources"].setdefault("requests", {})["cpu"] = cpu
        self.core.create_namespaced_pod(self.namespace, body)
        return name

    def delete(self, name: str) -> None:
        self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)

    def relabel(self, node: str, pool: str | None) -> None:
        self.core.patch_node(node, {"metadata": {"labels": {POOL_LABEL: pool}}})

    # ---------------------------------------------------------------- reading back
    def read(self, name: str):
        return self.core.read_namespaced_pod(name, self.namespace)

    def exists(self, name: str) -> bool:
        from kubernetes.client.rest import ApiException

        try:
            self.read(name)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def bound(self, name: str, timeout: float = 30.0) -> tuple[str, dict]:
        """Wait until the pod has a node; return (node, its fracgpu.io/assignment)."""
        pod = self.wait(lambda: (p := self.read(name)).spec.node_name and p, f"pod {name} to be bound", timeout)
        return pod.spec.node_name, json.loads(pod.metadata.annotations[ASSIGNMENT_ANNOTATION])

    def failed(self, name: str, timeout: float = 30.0) -> str:
        """Wait for a FailedScheduling event of the pod; return its message."""
        def message():
            events = self.core.list_namespaced_event(self.namespace,
                                                     field_selector=f"involvedObject.name={name}").items
            texts = [e.message for e in events if e.reason == "FailedScheduling"]
            return texts[-1] if texts else None

        return self.wait(message, f"a FailedScheduling event for {name}", timeout)

    def pods(self) -> dict[str, dict]:
        """Every pod of this namespace: name -> (node, assignment or None)."""
        out = {}
        for pod in self.core.list_namespaced_pod(self.namespace).items:
            raw = (pod.metadata.annotations or {}).get(ASSIGNMENT_ANNOTATION)
            out[pod.metadata.name] = (pod.spec.node_name, json.loads(raw) if raw else None)
        return out

    def inspect(self) -> dict:
        return self.cp.extender_inspect()

    def assert_no_overcommit(self) -> dict:
        """From the annotations alone: no GPU holds more than 100 units or more than its memory."""
        capacity = {}
        for node in self.core.list_node().items:
            gpus = json.loads(node.metadata.annotations[GPUS_ANNOTATION])["gpus"]
            capacity.update({(node.metadata.name, g["uuid"]): g["memoryMiB"] for g in gpus})
        units: dict = {}
        memory: dict = {}
        for node, assignment in self.pods().values():
            if assignment is None:
                continue
            assert assignment["node"] == node
            for uuid, (pod_units, pod_memory) in _pod_charges(assignment["containers"]).items():
                units[(node, uuid)] = units.get((node, uuid), 0) + pod_units
                memory[(node, uuid)] = memory.get((node, uuid), 0) + pod_memory
        over = {k: v for k, v in units.items() if v > 100}
        assert not over, f"GPUs holding more than 100 units: {over}"
        over = {k: (v, capacity[k]) for k, v in memory.items() if v > capacity[k]}
        assert not over, f"GPUs holding more memory than they have: {over}"
        return units

    @staticmethod
    def wait(probe, what: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.1)

    def cleanup(self) -> None:
        for pod in self.core.list_namespaced_pod(self.namespace).items:
            self.delete(pod.metadata.name)
        for node in self.nodes:
            self.core.delete_node(node)
        self.wait(lambda: not set(self.nodes) & set(self.inspect()["nodes"]), "the extender to forget the nodes")


def _pod_charges(containers: list[dict]) -> dict[str, tuple[int, int]]:
    """What one pod holds on each GPU, by Kubernetes' effective-request rule: containers that run at the same
    time add up (each init container with the sidecars declared before it; at the end the sidecars with the app
    containers), and the pod holds the most of any such phase."""
    def on_gpus(group: list[dict]) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for container in group:
            for share in container["gpus"]:
                units, memory = out.get(share["uuid"], (0, 0))
                out[share["uuid"]] = (units + share["units"], memory + (share.get("memoryMiB") or 0))
        return out

    sidecars: list[dict] = []
    phases = []
    for container in containers:
        if container["kind"] == "init":
            phases.append(on_gpus([*sidecars, container]))
        elif container["kind"] == "sidecar":
            sidecars.append(container)
    phases.append(on_gpus([*sidecars, *(c for c in containers if c["kind"] == "app")]))
    charges: dict[str, tuple[int, int]] = {}
    for phase in phases:
        for uuid, (units, memory) in phase.items():
            held = charges.get(uuid, (0, 0))
            charges[uuid] = (max(held[0], units), max(held[1], memory))
    return charges


@pytest.fixture
def k8s(control_plane):
    cluster = Cluster(control_plane)
    yield cluster
    cluster.cleanup()


def extender_log(cp: ControlPlane) -> str:
    return Path(cp.processes["extender"].log).read_text()


@pytest.fixture
def tls_files(tmp_path):
    import trustme

    ca = trustme.CA(organization_name="fracgpu e2e extender")
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("fracgpu-scheduler.e2e.invalid")
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "client-cert", "client-key")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client-cert"]))
    client.private_key_pem.write_to_path(str(files["client-key"]))
    return files


def tenant_client(cp: ControlPlane, namespace: str):
    """A client of TENANT_USER, granted only create, patch, update, get and list on pods in ``namespace``."""
    from kubernetes import client

    rbac = client.RbacAuthorizationV1Api(cp.api_client())
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "tenant"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "patch", "update", "get", "list"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "tenant"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                      "name": "tenant"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": TENANT_USER}]})
    return client.CoreV1Api(cp.api_client("tenant"))
