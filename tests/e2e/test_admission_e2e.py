"""Admission through the real API server: a tenant who may only create and patch pods in their namespace cannot
take, free or see GPUs they were not given, and a fracgpu pod gets its hand-off."""
from __future__ import annotations

import json

import pytest
from kubernetes.client.rest import ApiException

from extender.core.settings import ASSIGNMENT_ANNOTATION
from extender.testing.factories import gpu_pod
from tests.e2e.conftest import SCHEDULER, tenant_client


@pytest.fixture
def webhook(control_plane, k8s):
    """deploy/'s webhook served over TLS, for the test's namespace; yields a client of the tenant, who may only
    create, patch and read pods there."""
    with control_plane.admission_webhook(k8s.namespace):
        yield tenant_client(control_plane, k8s.namespace)


def _refused(create, message: str) -> None:
    with pytest.raises(ApiException) as caught:
        create()
    assert caught.value.status in (400, 403) and message in caught.value.body, caught.value.body


def _body(k8s, name, **kwargs):
    body = gpu_pod(name, namespace=k8s.namespace, **kwargs)
    del body["metadata"]["uid"]
    body["spec"]["schedulerName"] = SCHEDULER
    body["spec"]["terminationGracePeriodSeconds"] = 0
    return body


def test_a_tenant_can_neither_take_nor_free_gpus_and_a_fracgpu_pod_gets_its_handoff(k8s, webhook):
    tenant, ns = webhook, k8s.namespace
    node = k8s.node("adm", gpus=2)
    every_gpu = json.dumps({"version": 1, "podUID": "x", "node": node, "pool": None, "policy": "binpack",
                            "containers": [{"name": "main", "kind": "app", "gpus": [
                                {"uuid": f"GPU-{node}-{i}", "index": i, "units": 100, "memoryMiB": 16000}
                                for i in range(2)]}]})
    thief = _body(k8s, "thief")
    thief["spec"]["containers"][0]["resources"] = {}
    thief["spec"]["nodeName"] = node
    thief["metadata"]["annotations"][ASSIGNMENT_ANNOTATION] = every_gpu
    _refused(lambda: tenant.create_namespaced_pod(ns, thief),
             f"metadata.annotations[{ASSIGNMENT_ANNOTATION}]: only fracgpu's extender")

    plain = _body(k8s, "plain")
    plain["spec"]["containers"][0]["resources"] = {}
    tenant.create_namespaced_pod(ns, plain)
    _refused(lambda: tenant.patch_namespaced_pod("plain", ns, {"metadata": {"annotations": {
        ASSIGNMENT_ANNOTATION: every_gpu}}}), f"metadata.annotations[{ASSIGNMENT_ANNOTATION}]")

    sees_all = _body(k8s, "sees-all", units=30)
    sees_all["spec"]["containers"][0]["env"] = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]
    _refused(lambda: tenant.create_namespaced_pod(ns, sees_all),
             "spec.containers[0].env[0]: NVIDIA_VISIBLE_DEVICES is set by fracgpu")
    pinned = _body(k8s, "pinned", units=30)
    pinned["spec"]["nodeName"] = node
    _refused(lambda: tenant.create_namespaced_pod(ns, pinned), "spec.nodeName: a pod that asks for fracgpu.io/vgpu")

    tenant.create_namespaced_pod(ns, _body(k8s, "fair", units=200))
    bound_to, assignment = k8s.bound("fair")
    pod = k8s.read("fair")
    env = {e.name: e.value_from.field_ref.field_path for e in pod.spec.containers[0].env if e.value_from}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "metadata.annotations['main.containers.fracgpu.io/visible-devices']"
    uuids = ",".join(share["uuid"] for share in assignment["containers"][0]["gpus"])
    assert pod.metadata.annotations["main.containers.fracgpu.io/visible-devices"] == uuids and bound_to == node
    _refused(lambda: tenant.patch_namespaced_pod("fair", ns, {"metadata": {"annotations": {
        ASSIGNMENT_ANNOTATION: None}}}), f"metadata.annotations[{ASSIGNMENT_ANNOTATION}]")  # freeing its GPUs
    assert k8s.assert_no_overcommit() == {(node, f"GPU-{node}-0"): 100, (node, f"GPU-{node}-1"): 100}


def test_a_resource_quota_on_fracgpu_resources_limits_a_namespace(control_plane, k8s):
    """requests.fracgpu.io/vgpu and requests.fracgpu.io/vgpu-memory in a ResourceQuota, enforced by kube-apiserver's
    own quota admission (Kubernetes defaults an extended resource's request to its limit). No controller-manager
    runs here, so the test sets the quota's status as the quota controller would, before the first pod."""
    core, ns = control_plane.core, k8s.namespace
    hard = {"requests.fracgpu.io/vgpu": "100", "requests.fracgpu.io/vgpu-memory": "8000"}
    core.create_namespaced_resource_quota(ns, {"metadata": {"name": "gpus"}, "spec": {"hard": hard}})
    core.patch_namespaced_resource_quota_status("gpus", ns, {"status": {"hard": hard, "used": {
        key: "0" for key in hard}}})
    k8s.node("quota", gpus=2)
    k8s.pod("first", units=60, memory_mib=4000)
    k8s.pod("second", units=40, memory_mib=4000)  # exactly the quota
    with pytest.raises(ApiException) as caught:
        k8s.pod("third", units=10, memory_mib=100)
    assert caught.value.status == 403 and "exceeded quota: gpus" in caught.value.body
    assert "requested: requests.fracgpu.io/vgpu=10" in caught.value.body
    for name in ("first", "second"):
        k8s.bound(name)
    used = core.read_namespaced_resource_quota("gpus", ns).status.used
    assert used["requests.fracgpu.io/vgpu"] == "100" and used["requests.fracgpu.io/vgpu-memory"] == "8k"
