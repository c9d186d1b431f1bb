"""Pod admission: the hand-off injected into fracgpu pods; what would take, free or show GPUs is refused."""

import json

import pytest

from extender.core import CoreSettings
from extender.core.admission import review
from extender.core.settings import ASSIGNMENT_ANNOTATION
from extender.testing.factories import gpu_pod

EXTENDER = "system:serviceaccount:fracgpu-system:fracgpu-scheduler"
TENANT = "system:serviceaccount:team-a:ci"


def admit(pod, operation="CREATE", user=TENANT, old=None):
    return review(pod, operation=operation, user=user, old=old, settings=CoreSettings(), extender_user=EXTENDER,
                  scheduler_name="fracgpu-scheduler")


def fracgpu_pod(**kwargs):
    pod = gpu_pod("p", **kwargs)
    pod["spec"]["schedulerName"] = "fracgpu-scheduler"
    return pod


def apply(pod, patch):
    """Apply the ops review returns (add at a path, or append with '-')."""
    pod = json.loads(json.dumps(pod))
    for op in patch:
        assert op["op"] == "add"
        *parents, last = op["path"].strip("/").split("/")
        target = pod
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if last == "-":
            target.append(op["value"])
        else:
            target[last] = op["value"]
    return pod


def test_every_container_of_a_fracgpu_pod_gets_its_handoff_or_no_gpu():
    warmup = {"name": "warmup", "resources": {"limits": {"fracgpu.io/vgpu": "10"}}}
    pod = fracgpu_pod(units=30, init_containers=[warmup],
                      extra_containers=[{"name": "proxy", "env": [{"name": "MODE", "value": "x"}]}])
    answer = admit(pod)
    assert answer.allowed, answer.message
    patched = apply(pod, answer.patch)
    env = {c["name"]: {e["name"]: e for e in c["env"]} for c in
           patched["spec"]["initContainers"] + patched["spec"]["containers"]}
    assert env["main"]["NVIDIA_VISIBLE_DEVICES"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['main.containers.fracgpu.io/visible-devices']"
    assert env["warmup"]["FRACGPU_GPU_UNITS"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['warmup.containers.fracgpu.io/units']"
    assert env["proxy"]["NVIDIA_VISIBLE_DEVICES"] == {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}
    assert env["proxy"]["MODE"]["value"] == "x"  # what the pod set is kept


@pytest.mark.parametrize("variable", ["NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
                                      "CUDA_MPS_PIPE_DIRECTORY", "FRACGPU_GPU_UNITS"])
def test_a_pod_that_sets_a_gpu_variable_itself_is_refused_naming_the_field(variable):
    pod = fracgpu_pod(units=30)
    pod["spec"]["containers"][0]["env"] = [{"name": "OK", "value": "1"}, {"name": variable, "value": "all"}]
    answer = admit(pod)
    assert not answer.allowed and answer.message.startswith(f"spec.containers[0].env[1]: {variable} is set by fracgpu")


def test_a_fracgpu_pod_with_a_node_or_another_scheduler_is_refused():
    pod = fracgpu_pod(units=30)
    pod["spec"]["nodeName"] = "gpu-1"
    assert admit(pod).message.startswith("spec.nodeName: a pod that asks for fracgpu.io/vgpu must be placed by")
    pod = fracgpu_pod(units=30)
    pod["spec"]["schedulerName"] = "default-scheduler"
    assert admit(pod).message.startswith("spec.schedulerName:")


@pytest.mark.parametrize("key", [ASSIGNMENT_ANNOTATION, "main.containers.fracgpu.io/visible-devices"])
def test_only_the_extender_may_set_or_change_the_assignment_and_handoff_annotations(key):
    plain = gpu_pod("p")
    plain["spec"]["containers"][0]["resources"] = {}
    forged = json.loads(json.dumps(plain))
    forged["metadata"]["annotations"][key] = '{"version": 1}'
    assert admit(forged).message.startswith(f"metadata.annotations[{key}]: only fracgpu's extender")  # create
    assert not admit(forged, operation="UPDATE", old=plain).allowed  # a tenant's patch adding it
    assert not admit(plain, operation="UPDATE", old=forged).allowed  # or removing it (freeing the GPUs)
    assert admit(forged, operation="UPDATE", old=forged).allowed  # an update that leaves it alone
    assert admit(forged, operation="UPDATE", old=plain, user=EXTENDER).allowed


def test_a_pod_without_fracgpu_resources_is_left_alone():
    plain = gpu_pod("p")
    plain["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1"}}
    answer = admit(plain)
    assert answer.allowed and answer.patch == []


async def test_the_webhook_answers_admission_reviews(aiohttp_client):
    import base64

    from api_helpers import gpu_node, start

    client, ext, _ = await start(aiohttp_client, [gpu_node("a", gpus=1)])
    pod = fracgpu_pod(units=30)

    async def ask(obj, user=TENANT, operation="CREATE"):
        body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "r-1", "operation": operation, "object": obj, "userInfo": {"username": user}}}
        response = await client.post("/admit/pods", json=body)
        assert response.status == 200
        return (await response.json())["response"]

    allowed = await ask(pod)
    assert allowed["uid"] == "r-1" and allowed["allowed"] and allowed["patchType"] == "JSONPatch"
    patched = apply(pod, json.loads(base64.b64decode(allowed["patch"])))
    assert patched["spec"]["containers"][0]["env"][0]["name"] == "NVIDIA_VISIBLE_DEVICES"
    pod["spec"]["nodeName"] = "gpu-1"
    refused = await ask(pod)
    assert not refused["allowed"] and refused["status"]["message"].startswith("fracgpu: spec.nodeName:")
    bad = await client.post("/admit/pods", data=b"{}")
    assert bad.status == 400 and "AdmissionReview" in (await bad.json())["Error"]
