"""Pod admission: the hand-off injected into fracgpu pods; what would take, free or show GPUs is refused."""

import json

import pytest

from extender.core import CoreSettings
from extender.core.admission import review
from extender.core.settings import ASSIGNMENT_ANNOTATION
from extender.testing.factories import gpu_pod

EXTENDER = "system:serviceaccount:fracgpu-system:fracgpu-scheduler"
TENANT = "system:serviceaccount:team-a:ci"


def admit(pod, operation="CREATE", user=TENANT, old=None, runtime_class="", sub_resource=""):
    return review(pod, operation=operation, user=user, old=old, settings=CoreSettings(), extender_user=EXTENDER,
                  scheduler_name="fracgpu-scheduler", runtime_class=runtime_class, sub_resource=sub_resource)


def fracgpu_pod(**kwargs):
    pod = gpu_pod("p", **kwargs)
    pod["spec"]["schedulerName"] = "fracgpu-scheduler"
    return pod


def apply(pod, patch):
    """Apply the ops review returns (add at a path, or append with '-')."""
    pod = json.loads(json.dumps(pod))
    for op in patch:
        assert op["op"] == "add"
        *parents, last = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].strip("/").split("/")]
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


def test_only_fracgpu_pods_run_with_the_gpu_runtime_class():
    answer = admit(fracgpu_pod(units=30), runtime_class="nvidia")
    assert {"op": "add", "path": "/spec/runtimeClassName", "value": "nvidia"} in answer.patch
    chosen = fracgpu_pod(units=30)
    chosen["spec"]["runtimeClassName"] = "nvidia"
    answer = admit(chosen, runtime_class="nvidia")
    assert answer.allowed and not any(op["path"] == "/spec/runtimeClassName" for op in answer.patch)
    chosen["spec"]["runtimeClassName"] = "kata"
    assert admit(chosen, runtime_class="nvidia").message.startswith("spec.runtimeClassName: a pod that asks for")
    plain = gpu_pod("p")
    plain["spec"]["containers"][0]["resources"] = {}
    plain["spec"]["runtimeClassName"] = "nvidia"
    message = admit(plain, runtime_class="nvidia").message
    assert message.startswith("spec.runtimeClassName: 'nvidia' is a runtime that exposes GPUs"), message
    assert admit(plain).allowed  # without --runtime-class, the class is not fracgpu's to police
    assert not any(op["path"] == "/spec/runtimeClassName" for op in admit(fracgpu_pod(units=30)).patch)


def mps_pod(**kwargs):
    pod = fracgpu_pod(**kwargs)
    pod["metadata"]["annotations"]["fracgpu.io/sharing"] = "mps"
    return pod


def test_an_mps_pod_goes_to_mps_nodes_and_its_gpu_containers_get_the_daemons_pipes_and_shared_memory():
    pod = mps_pod(units=30, extra_containers=[{"name": "logger"}])
    pod["spec"]["nodeSelector"] = {"zone": "a"}
    pod["spec"]["tolerations"] = [{"key": "spot", "operator": "Exists"}]
    answer = admit(pod, runtime_class="nvidia")
    assert answer.allowed, answer.message
    patched = apply(pod, answer.patch)
    spec = patched["spec"]
    assert spec["nodeSelector"] == {"zone": "a", "fracgpu.io/sharing": "mps"}
    assert spec["tolerations"][1] == {"key": "fracgpu.io/sharing", "operator": "Equal", "value": "mps",
                                      "effect": "NoSchedule"}
    assert {v["name"]: v["hostPath"] for v in spec["volumes"]} == {
        "fracgpu-mps-pipe": {"path": "/run/fracgpu/mps/pipe", "type": "Directory"},
        "fracgpu-mps-shm": {"path": "/run/fracgpu/mps/shm", "type": "Directory"}}
    main, logger = spec["containers"]
    assert {m["name"]: m["mountPath"] for m in main["volumeMounts"]} == {
        "fracgpu-mps-pipe": "/run/fracgpu/mps/pipe", "fracgpu-mps-shm": "/dev/shm"}
    env = {e["name"]: e for e in main["env"]}
    assert env["CUDA_MPS_PIPE_DIRECTORY"]["value"] == "/run/fracgpu/mps/pipe"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['main.containers.fracgpu.io/mps-active-thread-percentage']"
    assert "volumeMounts" not in logger and logger["env"] == [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}]
    assert spec["runtimeClassName"] == "nvidia"
    fresh = apply(mps_pod(units=30), admit(mps_pod(units=30)).patch)["spec"]  # no selector, tolerations or volumes
    assert fresh["nodeSelector"] == {"fracgpu.io/sharing": "mps"} and len(fresh["tolerations"]) == 1
    assert len(fresh["volumes"]) == 2


@pytest.mark.parametrize("toleration", [{"operator": "Exists"}, {"key": "fracgpu.io/sharing", "operator": "Exists"},
                                        {"key": "fracgpu.io/sharing", "value": "mps"},
                                        {"key": "fracgpu.io/sharing", "value": "mps", "effect": "NoSchedule"}])
def test_a_pod_that_does_not_ask_for_mps_may_not_tolerate_the_taint_of_mps_nodes(toleration):
    pod = fracgpu_pod(units=30)
    pod["spec"]["tolerations"] = [{"key": "spot", "operator": "Exists"}, toleration]
    assert admit(pod).message.startswith("spec.tolerations[1]: tolerates the taint of MPS nodes, where a pod must "
                                         "ask for MPS (fracgpu.io/sharing: mps)")
    pod["spec"]["tolerations"][1] = {**toleration, "effect": "NoExecute"}  # another effect: not the MPS taint
    assert admit(pod).allowed


def test_what_would_break_an_mps_pods_handoff_is_refused_naming_the_field():
    pod = mps_pod(units=30)
    pod["spec"]["nodeSelector"] = {"fracgpu.io/sharing": "time-slicing"}
    assert admit(pod).message.startswith("spec.nodeSelector[fracgpu.io/sharing]: an MPS pod runs on nodes labelled")
    pod = mps_pod(units=30)
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "cache", "mountPath": "/dev/shm"}]
    assert admit(pod).message.startswith("spec.containers[0].volumeMounts[0]: an MPS client gets the MPS daemon's")
    pod = mps_pod(units=30)
    pod["spec"]["volumes"] = [{"name": "fracgpu-mps-shm", "emptyDir": {}}]
    assert admit(pod).message.startswith("spec.volumes: fracgpu-mps-shm is the name of the volume fracgpu adds")
    pod = mps_pod(units=30)
    pod["metadata"]["annotations"]["fracgpu.io/sharing"] = "exclusive"
    assert "metadata.annotations[fracgpu.io/sharing]: must be one of time-slicing, mps" in admit(pod).message
    before, after = fracgpu_pod(units=30), mps_pod(units=30)
    assert admit(after, operation="UPDATE", old=before).message == \
        "metadata.annotations[fracgpu.io/sharing]: is set when the pod is created and cannot change"
    assert admit(after, operation="UPDATE", old=after).allowed


def test_a_container_added_to_a_running_pod_sees_no_gpu_and_may_not_set_the_gpu_variables():
    before = fracgpu_pod(units=30)
    before["spec"]["ephemeralContainers"] = [{"name": "debug-1", "image": "cuda-like", "env": []}]
    after = json.loads(json.dumps(before))
    after["spec"]["ephemeralContainers"].append({"name": "debug-2", "image": "cuda-like"})
    answer = admit(after, operation="UPDATE", old=before, sub_resource="ephemeralcontainers")
    assert answer.allowed and answer.patch == [{"op": "add", "path": "/spec/ephemeralContainers/1/env",
                                                "value": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}]}]
    after["spec"]["ephemeralContainers"][1]["env"] = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]
    assert admit(after, operation="UPDATE", old=before, sub_resource="ephemeralcontainers").message.startswith(
        "spec.ephemeralContainers[1].env[0]: NVIDIA_VISIBLE_DEVICES is set by fracgpu")


@pytest.mark.parametrize("make", [lambda: fracgpu_pod(units=30, extra_containers=[{"name": "logger"}]),
                                  lambda: mps_pod(units=30, extra_containers=[{"name": "logger"}])],
                         ids=["time-slicing", "mps"])
def test_admission_invoked_again_on_its_own_output_adds_only_what_is_missing(make):
    # reinvocationPolicy IfNeeded: another webhook (a sidecar injector) adds a container after fracgpu's patch,
    # and fracgpu is called again with the pod as it now is
    once = apply(make(), admit(make(), runtime_class="nvidia").patch)
    once["spec"]["containers"].append({"name": "istio-proxy", "image": "proxy"})
    again = admit(once, runtime_class="nvidia")
    assert again.allowed, again.message
    assert again.patch == [{"op": "add", "path": "/spec/containers/2/env",
                            "value": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}]}]
    twice = apply(once, again.patch)
    assert admit(twice, runtime_class="nvidia").patch == []
    # the entries recognised are those fracgpu gives that very container: another container's are still refused
    stolen = json.loads(json.dumps(twice))
    stolen["spec"]["containers"][2]["env"] = twice["spec"]["containers"][0]["env"][:1]
    assert admit(stolen).message.startswith("spec.containers[2].env[0]: NVIDIA_VISIBLE_DEVICES is set by fracgpu")


def test_a_debug_container_admitted_again_keeps_its_one_entry():
    before = fracgpu_pod(units=30)
    after = json.loads(json.dumps(before))
    after["spec"]["ephemeralContainers"] = [{"name": "debug", "image": "cuda-like"}]
    once = apply(after, admit(after, operation="UPDATE", old=before, sub_resource="ephemeralcontainers").patch)
    again = admit(once, operation="UPDATE", old=before, sub_resource="ephemeralcontainers")
    assert again.allowed and again.patch == [], again.message


def test_every_nvidia_runtime_class_is_refused_to_pods_without_fracgpu_resources():
    # NVIDIA's GPU Operator installs nvidia, nvidia-cdi and nvidia-legacy, each on the NVIDIA runtime
    classes = "nvidia, nvidia-cdi,nvidia-legacy"
    plain = gpu_pod("p")
    plain["spec"]["containers"][0]["resources"] = {}
    for name in ("nvidia-cdi", "nvidia-legacy"):
        plain["spec"]["runtimeClassName"] = name
        assert admit(plain, runtime_class=classes).message.startswith(
            f"spec.runtimeClassName: {name!r} is a runtime that exposes GPUs")
    plain["spec"]["runtimeClassName"] = "kata"
    assert admit(plain, runtime_class=classes).allowed
    answer = admit(fracgpu_pod(units=30), runtime_class=classes)
    assert {"op": "add", "path": "/spec/runtimeClassName", "value": "nvidia"} in answer.patch


def test_an_update_may_not_give_a_fracgpu_pod_the_toleration_of_mps_nodes():
    before = fracgpu_pod(units=30)
    after = json.loads(json.dumps(before))
    after["spec"]["tolerations"] = [{"key": "spot", "operator": "Exists"}, {"operator": "Exists"}]
    assert admit(after, operation="UPDATE", old=before).message.startswith(
        "spec.tolerations[1]: tolerates the taint of MPS nodes, where a pod must ask for MPS")
    after["spec"]["tolerations"].pop()
    assert admit(after, operation="UPDATE", old=before).allowed  # another toleration may be added
    mps_before = mps_pod(units=30)
    mps_after = json.loads(json.dumps(mps_before))
    mps_after["spec"]["tolerations"] = [{"operator": "Exists"}]
    assert admit(mps_after, operation="UPDATE", old=mps_before).allowed


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
