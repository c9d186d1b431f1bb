"""The hand-off on a real node: kube-scheduler and the extender place pods, admission injects the hand-off, and a
real kubelet v1.36.3 with containerd and runc starts the containers (``testbed/node.py``).

The node has no GPU: its GPUs are the agent's ``h100x8-nvswitch`` fixture, and the ``nvidia`` RuntimeClass runs
a stand-in for nvidia-container-runtime that exposes, as a file ``/dev/nvidia<index>`` holding the GPU's UUID,
each GPU that the container's ``NVIDIA_VISIBLE_DEVICES`` names. Every container prints its environment and those
files; the tests compare them with the pod's ``fracgpu.io/assignment``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from kubernetes import utils
from kubernetes.client.rest import ApiException

from extender.core.handoff import MPS_PIPES, MPS_ROOT, MPS_SHM
from extender.core.settings import ASSIGNMENT_ANNOTATION, MPS, SHARING_ANNOTATION, SHARING_LABEL
from testbed.controlplane import DEPLOY, ControlPlaneError
from testbed.node import RUNTIME_HANDLER, Node
from testbed.pods import VARIABLES, burst, parse_report, pod_body, probe
from tests.e2e.conftest import _unavailable, tenant_client

NODE = "e2e-node"
FIXTURE = "h100x8-nvswitch"
@pytest.fixture(scope="module")
def real_node(control_plane, tmp_path_factory):
    cp = control_plane
    cp.fake_kubelet.real_nodes.add(NODE)
    for doc in yaml.safe_load_all((DEPLOY / "55-runtimeclass.yaml").read_text()):
        utils.create_from_dict(cp.api_client(), doc)
    try:
        with Node.start(cp, tmp_path_factory.mktemp("node"), name=NODE, fixture=FIXTURE,
                        log=lambda m: print(m, flush=True)) as node:
            yield node
    except ControlPlaneError as exc:  # NodeError too: packages, containerd, kubelet
        _unavailable(f"cannot run a real node: {exc}")


@pytest.fixture
def gpu_namespace(control_plane, real_node, k8s):
    """The test's namespace under deploy/'s webhook, whose extender gives fracgpu pods the ``nvidia`` class."""
    with control_plane.admission_webhook(k8s.namespace, "--runtime-class", RUNTIME_HANDLER):
        yield tenant_client(control_plane, k8s.namespace)


def received(node: Node, pod) -> dict[str, dict | None]:
    """Per container: what it reported (:func:`testbed.pods.parse_report`), None where it has not yet."""
    out = {}
    for spec in [*(pod.spec.init_containers or []), *pod.spec.containers]:
        text = node.container_output(pod.metadata.namespace, pod.metadata.name, pod.metadata.uid, spec.name)
        out[spec.name] = parse_report(text) if text is not None else None
    return out


def mismatches(node: Node, pod) -> list[str]:
    """Every way the containers' view differs from the pod's assignment (empty: each saw exactly its GPUs)."""
    assignment = json.loads(pod.metadata.annotations[ASSIGNMENT_ANNOTATION])
    expected = {c["name"]: c["gpus"] for c in assignment["containers"]}
    problems = []
    for name, seen in received(node, pod).items():
        where = f"{pod.metadata.name}/{name}"
        if seen is None:
            problems.append(f"{where}: no report in its log")
            continue
        env, gpus = seen["env"], expected.get(name)
        want = dict.fromkeys(VARIABLES, "unset")
        if gpus is None:
            want["NVIDIA_VISIBLE_DEVICES"] = "void"
            want_devices: dict = {}
        else:
            want.update({"NVIDIA_VISIBLE_DEVICES": ",".join(g["uuid"] for g in gpus),
                         "FRACGPU_GPU_UNITS": ",".join(str(g["units"]) for g in gpus),
                         "FRACGPU_GPU_MEMORY_MIB": ",".join(str(g["memoryMiB"]) for g in gpus)})
            want_devices = {f"/dev/nvidia{g['index']}": g["uuid"] for g in gpus}
        if env != want:
            problems.append(f"{where}: environment {env}, assignment says {want}")
        if seen["devices"] != want_devices:
            problems.append(f"{where}: devices {seen['devices']}, assignment says {want_devices}")
    return problems


def running(k8s, names: set[str], timeout: float = 120.0) -> dict:
    def all_running():
        pods = {p.metadata.name: p for p in k8s.core.list_namespaced_pod(k8s.namespace).items}
        bad = [f"{n}: {p.status.phase} {p.status.reason or ''} {p.status.message or ''}" for n, p in pods.items()
               if n in names and p.status.phase == "Failed"]
        assert not bad, f"pods failed: {bad}"
        return pods if all(pods.get(n) is not None and pods[n].status.phase == "Running" for n in names) else None

    return k8s.wait(all_running, f"{len(names)} pods Running on {NODE}", timeout)


def test_every_container_of_a_burst_of_40_sees_exactly_its_assigned_gpus(k8s, real_node, gpu_namespace):
    tenant = gpu_namespace
    bodies = burst(k8s.namespace, NODE)
    for body in bodies:
        tenant.create_namespaced_pod(k8s.namespace, body)
    pods = running(k8s, {b["metadata"]["name"] for b in bodies})

    def reported():
        return all(None not in received(real_node, p).values() for p in pods.values())

    k8s.wait(reported, "every container's report in its log")
    problems = [problem for pod in pods.values() for problem in mismatches(real_node, pod)]
    assert problems == []
    assert {p.spec.runtime_class_name for p in pods.values()} == {RUNTIME_HANDLER}
    k8s.assert_no_overcommit()
    containers = sum(len(json.loads(p.metadata.annotations[ASSIGNMENT_ANNOTATION])["containers"])
                     for p in pods.values())
    assert containers == 16 + 2 + 4 + 8 * 2 + 6 * 2 + 2 + 4  # every GPU container was checked


def test_a_pod_without_fracgpu_resources_sees_no_gpu_on_a_gpu_node(control_plane, k8s, real_node, gpu_namespace):
    """The image sets NVIDIA_VISIBLE_DEVICES=all. Without the ``nvidia`` class the pod runs with plain runc, which
    exposes nothing; admission refuses it that class. The same image with the class (created where no webhook
    looks) would see all eight GPUs, so the check is not vacuous."""
    tenant, ns = gpu_namespace, k8s.namespace
    plain = pod_body(ns, "plain", node=NODE, containers=[probe("main")], scheduler=None)
    plain["spec"]["nodeName"] = NODE
    del plain["spec"]["nodeSelector"]
    tenant.create_namespaced_pod(ns, plain)
    asking = dict(plain, metadata={"name": "asking", "namespace": ns})
    asking["spec"] = dict(plain["spec"], runtimeClassName=RUNTIME_HANDLER)
    with pytest.raises(ApiException) as caught:
        tenant.create_namespaced_pod(ns, asking)
    assert caught.value.status == 403 and "spec.runtimeClassName: 'nvidia' is a runtime that exposes GPUs" in \
        caught.value.body, caught.value.body

    control_ns = f"{ns}-control"  # outside every webhook's namespaceSelector
    control_plane.core.create_namespace({"metadata": {"name": control_ns}})
    control_plane.core.create_namespaced_service_account(control_ns, {"metadata": {"name": "default"}})
    try:
        control = dict(asking, metadata={"name": "control", "namespace": control_ns})
        control_plane.core.create_namespaced_pod(control_ns, control)
        pods = running(k8s, {"plain"})
        controls = k8s.wait(lambda: [p for p in control_plane.core.list_namespaced_pod(control_ns).items
                                     if p.status.phase == "Running"], "the control pod Running", 60)
        seen = k8s.wait(lambda: received(real_node, pods["plain"])["main"], "the plain pod's report")
        assert seen == {"env": {**dict.fromkeys(VARIABLES, "unset"), "NVIDIA_VISIBLE_DEVICES": "all"}, "devices": {},
                        "files": []}
        control_seen = k8s.wait(lambda: received(real_node, controls[0])["main"], "the control pod's report")
        assert len(control_seen["devices"]) == 8 and control_seen["env"]["NVIDIA_VISIBLE_DEVICES"] == "all"
    finally:
        control_plane.core.delete_namespace(control_ns)
        for pod in control_plane.core.list_namespaced_pod(control_ns).items:
            control_plane.core.delete_namespaced_pod(pod.metadata.name, control_ns, grace_period_seconds=0)


@pytest.fixture
def mps_node(control_plane, real_node):
    """The node as an MPS node: its label and taint, and the MPS daemon's directories (no daemon runs: no GPU)
    with a file in each, so a container shows which it mounted."""
    core = control_plane.core
    created = not Path(MPS_ROOT).exists()
    for directory in (MPS_PIPES, MPS_SHM):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "from-the-daemon").write_text("")
    taint = {"key": SHARING_LABEL, "value": MPS, "effect": "NoSchedule"}
    core.patch_node(NODE, {"metadata": {"labels": {SHARING_LABEL: MPS}}, "spec": {"taints": [taint]}})
    try:
        yield NODE
    finally:
        core.patch_node(NODE, {"metadata": {"labels": {SHARING_LABEL: None}}, "spec": {"taints": None}})
        if created:
            shutil.rmtree(MPS_ROOT, ignore_errors=True)


def test_an_mps_pod_gets_the_mps_daemons_pipes_and_shared_memory_and_its_limits(k8s, real_node, mps_node,
                                                                               gpu_namespace):
    tenant, ns = gpu_namespace, k8s.namespace
    body = pod_body(ns, "mps", node=NODE, gpu_count=2,
                    containers=[probe("main", units=60, memory_mib=20000), probe("logger")])
    body["metadata"]["annotations"][SHARING_ANNOTATION] = MPS
    tenant.create_namespaced_pod(ns, body)
    tenant.create_namespaced_pod(ns, pod_body(ns, "time-sliced", node=NODE, containers=[probe("main", units=10)]))
    pod = running(k8s, {"mps"})["mps"]
    assert "untolerated taint" in k8s.failed("time-sliced")  # MPS nodes are for MPS pods only
    seen = k8s.wait(lambda: received(real_node, pod)["main"], "the MPS pod's report")
    (gpus,) = [c["gpus"] for c in json.loads(pod.metadata.annotations[ASSIGNMENT_ANNOTATION])["containers"]]
    assert seen["env"] == {
        "NVIDIA_VISIBLE_DEVICES": ",".join(g["uuid"] for g in gpus), "FRACGPU_GPU_UNITS": "30,30",
        "FRACGPU_GPU_MEMORY_MIB": "10000,10000", "CUDA_MPS_PIPE_DIRECTORY": MPS_PIPES,
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "30",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": ",".join(f"{g['uuid']}=10000M" for g in gpus)}
    assert set(seen["files"]) == {f"{MPS_PIPES}/from-the-daemon", "/dev/shm/from-the-daemon"}
    logger = received(real_node, pod)["logger"]
    assert logger["env"]["NVIDIA_VISIBLE_DEVICES"] == "void" and logger["files"] == [] and not logger["devices"]


def test_a_container_added_to_a_running_gpu_pod_sees_no_gpu(control_plane, k8s, real_node, gpu_namespace):
    """kubectl debug adds an ephemeral container, which runs with the pod's runtime (here the NVIDIA one) and an
    image that sets NVIDIA_VISIBLE_DEVICES=all. A tenant who may add one gets no GPU through it."""
    from kubernetes import client

    ns = k8s.namespace
    rbac = client.RbacAuthorizationV1Api(control_plane.api_client())
    rbac.patch_namespaced_role("tenant", ns, {"rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "patch", "update", "get", "list"]},
        {"apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "verbs": ["patch", "update"]}]})
    gpu_namespace.create_namespaced_pod(ns, pod_body(ns, "debugged", node=NODE,
                                                     containers=[probe("main", units=20, memory_mib=1000)]))
    pod = running(k8s, {"debugged"})["debugged"]
    debug = probe("debug")
    del debug["resources"]
    gpu_namespace.patch_namespaced_pod_ephemeralcontainers("debugged", ns, {"spec": {"ephemeralContainers": [debug]}})
    report = k8s.wait(lambda: parse_report(real_node.container_output(ns, "debugged", pod.metadata.uid, "debug") or
                                           ""), "the debug container's report", 60)
    assert report["env"]["NVIDIA_VISIBLE_DEVICES"] == "void" and report["devices"] == {}
    main = k8s.wait(lambda: received(real_node, pod)["main"], "the main container's report")
    assert len(main["devices"]) == 1  # the pod's own container still sees its GPU


def test_gpu_usage_is_attributed_to_the_real_containers_and_misuse_is_flagged(control_plane, k8s, real_node,
                                                                             gpu_namespace, tmp_path, capsys):
    """The agent's usage loop on this node's real containers: NVML is the fixture machine given processes whose
    PIDs are those of two running containers (so their /proc/<pid>/cgroup is what kubelet and containerd made),
    and of this test (a host process). One pod stays within its share; the other holds more than its share and
    also runs on a GPU it was not assigned: the agent flags it with events, exports it on /metrics, and
    ``kubectl fracgpu top`` shows it."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from extender.agent.fake import FIXTURES
    from extender.kube import kubectl
    from testbed.controlplane import free_port

    ns = k8s.namespace
    for name in ("fits", "greedy"):
        gpu_namespace.create_namespaced_pod(ns, pod_body(ns, name, node=NODE,
                                                         containers=[probe("main", units=10, memory_mib=1000)]))
    pods = running(k8s, {"fits", "greedy"})
    tasks = {line.split()[0]: int(line.split()[1]) for line in real_node._ctr("tasks", "ls").splitlines()[1:]}
    pid = {name: tasks[pods[name].status.container_statuses[0].container_id.partition("://")[2]]
           for name in ("fits", "greedy")}
    gpu = {name: json.loads(pods[name].metadata.annotations[ASSIGNMENT_ANNOTATION])["containers"][0]["gpus"][0]["index"]
           for name in ("fits", "greedy")}
    elsewhere = next(i for i in range(8) if i not in gpu.values())
    machine = json.loads((FIXTURES / f"{FIXTURE}.json").read_text())
    machine["gpus"][gpu["fits"]].setdefault("processes", []).append({"pid": pid["fits"], "usedMiB": 600, "smUtil": 20})
    machine["gpus"][gpu["greedy"]].setdefault("processes", []).append({"pid": pid["greedy"], "usedMiB": 1500})
    machine["gpus"][elsewhere].setdefault("processes", []).extend([{"pid": pid["greedy"], "usedMiB": 100},
                                                                    {"pid": os.getpid(), "usedMiB": 50}])
    (tmp_path / "machine.json").write_text(json.dumps(machine))
    port = free_port()
    agent = control_plane.start_agent(NODE, "--node-name", NODE, "--fake", str(tmp_path / "machine.json"),
                                      "--usage-interval", "0.5", "--metrics-listen", f"127.0.0.1:{port}")
    try:
        def scraped():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    text = response.read().decode()
            except OSError:  # not listening yet
                assert agent.alive(), agent.tail()
                return None
            samples = {(s.name, s.labels.get("pod"), s.labels.get("gpu"), s.labels.get("kind")): s.value
                       for family in text_string_to_metric_families(text) for s in family.samples
                       if s.labels.get("namespace") in (ns, None)}
            return samples if ("fracgpu_pod_gpu_memory_used_mib", "greedy", str(elsewhere), None) in samples else None

        samples = k8s.wait(scraped, "the agent's per-pod usage on /metrics", 60)

        def flagged_events():
            events = k8s.core.list_namespaced_event(ns).items
            found = sorted((e.involved_object.name, e.reason) for e in events
                           if e.source and e.source.component == "fracgpu-agent")
            return found if len(found) >= 2 else None

        reasons = k8s.wait(flagged_events, "the agent's events", 30)
        admin = str(control_plane.kubeconfig("admin"))

        def top():
            assert kubectl.main(["--kubeconfig", admin, "-o", "json", "top", "-n", ns]) == 0
            rows = json.loads(capsys.readouterr().out)
            return rows if len(rows) == 3 else None

        rows = k8s.wait(top, "the usage ConfigMap", 30)
    finally:
        agent.stop()
    used = {(pod, int(g)): v for (name, pod, g, _), v in samples.items() if name == "fracgpu_pod_gpu_memory_used_mib"}
    assert used == {("fits", gpu["fits"]): 600, ("greedy", gpu["greedy"]): 1500, ("greedy", elsewhere): 100}
    flagged = {(pod, int(g), kind) for (name, pod, g, kind), v in samples.items()
               if name == "fracgpu_pod_gpu_flagged" and v == 1}
    assert flagged == {("greedy", gpu["greedy"], "over-memory"), ("greedy", elsewhere, "unassigned-gpu")}
    assert samples[("fracgpu_gpu_unattributed_memory_mib", None, str(elsewhere), None)] == 50  # this test itself

    assert reasons == [("greedy", "GPUMemoryOverShare"), ("greedy", "GPUNotAssigned")]
    assert [(r["pod"], r["container"], r["gpu"], r["used_mib"], r["share_mib"], r["flag"]) for r in rows] == [
        ("fits", "main", gpu["fits"], 600, 1000, None),
        *sorted([("greedy", "main", gpu["greedy"], 1500, 1000, "over-memory"),
                 ("greedy", "main", elsewhere, 100, None, "unassigned-gpu")], key=lambda r: r[2])]
    assert kubectl.main(["--kubeconfig", admin, "top", "-n", ns]) == 0
    table = capsys.readouterr().out
    print(table)
    assert "1500/1000" in table and "unassigned-gpu" in table
