"""The node agent against the real API server, as deploy/'s agent ServiceAccount, on a fixture machine: what it
publishes, that it stays quiet while nothing changes, that it repairs what others reset, that the scheduler then
places on its GPUs, and that it stops on SIGTERM."""
from __future__ import annotations

import json
import signal
import time

from kubernetes import client

from extender.agent.fake import FakeNvml
from extender.core.settings import GPUS_ANNOTATION


def bare_node(cp, name: str) -> None:
    """A node as kubelet registers it: CPU and memory, no GPU information at all."""
    cp.core.create_node({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}})
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "250"}
    cp.core.patch_node_status(name, {"status": {"capacity": capacity, "allocatable": capacity}})
    cp.core.patch_node(name, {"spec": {"taints": None}})


def test_agent_publishes_keeps_quiet_repairs_and_its_gpus_get_pods(k8s, control_plane):
    name = f"{k8s.tag}-agent"
    bare_node(control_plane, name)
    k8s.nodes.append(name)
    machine = FakeNvml.fixture("h100x8-nvswitch")
    proc = control_plane.start_agent(name, "--fake", "h100x8-nvswitch", "--interval", "0.2")

    def published():
        node = control_plane.core.read_node(name)
        return (node.metadata.annotations or {}).get(GPUS_ANNOTATION) and \
            "fracgpu.io/vgpu" in (node.status.allocatable or {}) and node

    node = k8s.wait(published, "the agent to publish the node")
    inventory = json.loads(node.metadata.annotations[GPUS_ANNOTATION])
    assert [g["uuid"] for g in inventory["gpus"]] == [g["uuid"] for g in machine.gpus]
    assert inventory["links"][0][1] == "NV18"
    for field in (node.status.capacity, node.status.allocatable):
        assert field["fracgpu.io/vgpu"] == "800" and field["fracgpu.io/vgpu-memory"] == str(8 * 81559)
    assert node.status.capacity["cpu"] == "64"

    # About ten refreshes with nothing changed: the node is unchanged, and (counted at the end) not one patch
    # call was made; the API server would swallow an identical patch, so the count is what proves it.
    version = node.metadata.resource_version
    time.sleep(2.0)
    assert control_plane.core.read_node(name).metadata.resource_version == version

    # Something (kubelet re-registering, a person) resets the totals: the agent writes them back.
    control_plane.core.patch_node_status(name, {"status": {"allocatable": {"fracgpu.io/vgpu": "0"}}})
    k8s.wait(lambda: control_plane.core.read_node(name).status.allocatable["fracgpu.io/vgpu"] == "800",
             "the agent to restore allocatable", timeout=10)

    # The extender reads what the agent wrote; the scheduler places a pod on one of these UUIDs.
    k8s.wait(lambda: name in k8s.inspect()["nodes"], f"the extender to see node {name}")
    k8s.pod("on-agent-node", units=30, memory_mib=4096, node=name)
    bound_to, assignment = k8s.bound("on-agent-node")
    (share,) = assignment["containers"][0]["gpus"]
    assert bound_to == name and share["uuid"] in {g["uuid"] for g in machine.gpus}

    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(timeout=10) == 0
    control_plane.processes.pop(f"agent-{name}")
    assert "stopped after 3 patches" in proc.tail()  # annotation + status at start, status once repaired


def test_agent_identity_has_what_it_needs_and_no_more(control_plane):
    api = client.AuthorizationV1Api(control_plane.api_client("agent"))

    def allowed(verb, resource, subresource="", namespace=""):
        review = {"spec": {"resourceAttributes": {"verb": verb, "resource": resource, "subresource": subresource,
                                                  "group": "", "namespace": namespace}}}
        return api.create_self_subject_access_review(review).status.allowed

    assert allowed("get", "nodes") and allowed("patch", "nodes") and allowed("patch", "nodes", "status")
    assert not allowed("list", "nodes") and not allowed("delete", "nodes") and not allowed("update", "nodes")
    assert not allowed("get", "pods", namespace="default") and not allowed("get", "secrets", namespace="default")
