"""Scenarios through upstream kube-apiserver and kube-scheduler (v1.36.3) with the extender in live mode.

Each test asserts what the API server holds afterwards: the pod's node, its ``fracgpu.io/assignment``, and the
``FailedScheduling`` event text for a pod that stays pending.
"""
from __future__ import annotations

import csv
import json
import random
import signal
import time

from kubernetes import client, utils
import yaml

from extender.testing.factories import gpu_pod
from simulator import cli
from testbed.controlplane import DEPLOY
from tests.e2e.conftest import extender_log


def gpus_of(assignment: dict) -> list[int]:
    return [share["index"] for c in assignment["containers"] for share in c["gpus"]]


def test_binpack_shares_one_gpu(k8s):
    node = k8s.node("a", gpus=2)
    placed = []
    for i in range(3):
        k8s.pod(f"p{i}", units=30, memory_mib=2000)
        placed.append(k8s.bound(f"p{i}"))
    assert {n for n, _ in placed} == {node}
    assert [gpus_of(a) for _, a in placed] == [[0], [0], [0]]
    assert all(a["policy"] == "binpack" and a["containers"][0]["gpus"][0]["units"] == 30 for _, a in placed)
    assert k8s.assert_no_overcommit() == {(node, f"GPU-{node}-0"): 90}


def test_spread_per_pod_uses_distinct_gpus(k8s):
    k8s.node("a", gpus=2)
    k8s.pod("s0", units=30, policy="spread")
    first = gpus_of(k8s.bound("s0")[1])
    k8s.pod("s1", units=30, policy="spread")
    _, second = k8s.bound("s1")
    assert second["policy"] == "spread" and first != gpus_of(second)


def test_memory_headroom_keeps_pod_pending_with_a_memory_reason(k8s):
    k8s.node("a", gpus=2, memory_mib=16_384)
    k8s.pod("big", units=10, memory_mib=20_000)  # 32 GiB on the node, but no single GPU has 20,000 MiB
    message = k8s.failed("big")
    assert "memory" in message.lower(), message
    assert k8s.read("big").spec.node_name is None


def test_pool_isolation_at_node_level(k8s):
    k8s.node("a", gpus=1, pool="team-a")
    b = k8s.node("b", gpus=1, pool="team-b")
    k8s.node("none", gpus=1)
    k8s.pod("pb", units=10, pool="team-b")
    assert k8s.bound("pb")[0] == b
    k8s.pod("pc", units=10, pool="team-c")
    message = k8s.failed("pc")
    assert "pool" in message and k8s.read("pc").spec.node_name is None, message


def test_pool_isolation_at_gpu_level(k8s):
    node = k8s.node("a", gpus=2, pool="team-a")
    k8s.pod("old", units=10, pool="team-a")
    assert gpus_of(k8s.bound("old")[1]) == [0]
    k8s.relabel(node, "team-b")  # the node changes hands while a team-a pod still runs on GPU 0
    k8s.wait(lambda: k8s.inspect()["nodes"][node][1]["pool"] is None and _node_pool(k8s, node) == "team-b",
             "the extender to see the new label")
    k8s.pod("new", units=10, pool="team-b")
    _, assignment = k8s.bound("new")
    assert gpus_of(assignment) == [1]  # binpack would take the used GPU 0; it is team-a's
    table = k8s.inspect()["nodes"][node]
    assert [g["pool"] for g in table] == ["team-a", "team-b"]


def _node_pool(k8s, node):
    return (k8s.core.read_node(node).metadata.labels or {}).get("fracgpu.io/pool")


def test_gpu_model_restriction(k8s):
    k8s.node("t4", gpus=1, model="Tesla T4", memory_mib=15_360)
    h100 = k8s.node("h100", gpus=1, model="NVIDIA H100 80GB HBM3", memory_mib=81_559)
    k8s.pod("needs-h100", units=20, models="H100")
    assert k8s.bound("needs-h100")[0] == h100
    k8s.pod("needs-a100", units=20, models="A100")
    message = k8s.failed("needs-a100")
    assert "A100" in message, message


def test_whole_gpu_and_multi_gpu_requests(k8s):
    node = k8s.node("a", gpus=4)
    k8s.pod("whole", units=100)
    _, whole = k8s.bound("whole")
    k8s.pod("pair", units=160, gpu_count=2)
    _, pair = k8s.bound("pair")
    assert len(gpus_of(whole)) == 1 and whole["containers"][0]["gpus"][0]["units"] == 100
    assert len(set(gpus_of(pair))) == 2 and not set(gpus_of(pair)) & set(gpus_of(whole))
    assert [s["units"] for s in pair["containers"][0]["gpus"]] == [80, 80]
    k8s.pod("too-many", units=500, gpu_count=5)  # 5 GPUs asked, the node has 4
    message = k8s.failed("too-many")  # the scheduler's own node-level count says it first
    assert "fracgpu.io/vgpu" in message or "GPU" in message, message
    k8s.assert_no_overcommit()
    assert node


def test_pending_pod_is_placed_soon_after_capacity_is_freed(k8s):
    # Five rounds, because the hazard is a race: kube-scheduler retries the pending pod on the deletion
    # event, possibly before the extender's own watch has delivered that deletion.
    k8s.node("a", gpus=1)
    waits = []
    k8s.pod("holder0", units=80)
    k8s.bound("holder0")
    for i in range(5):
        k8s.pod(f"waiter{i}", units=80)
        k8s.failed(f"waiter{i}")
        freed = time.monotonic()
        k8s.delete(f"holder{i}" if i == 0 else f"waiter{i - 1}")
        _, assignment = k8s.bound(f"waiter{i}", timeout=60)
        waits.append(time.monotonic() - freed)
        assert assignment["containers"][0]["gpus"][0]["units"] == 80
    assert max(waits) < 10, f"placed {waits} s after the capacity was freed"


def test_preemption_evicts_exactly_the_victims_the_extender_chose(k8s, control_plane):
    # Node a: each GPU holds a low pod and a pinned (higher than everything) pod, 50 units each. The scheduler
    # sees 100 of 200 units freeable there and its victims (the two low pods) have the lowest priority, so on
    # its own it prefers node a. But freeing them leaves 50 + 50 on two GPUs: no single GPU takes 80. The
    # extender drops node a; node b (one mid pod of 90 units) is where the pod really fits.
    a = k8s.node("a", gpus=2)
    b = k8s.node("b", gpus=1)
    for name, priority in (("a-low0", "low"), ("a-pin0", "pinned"), ("a-low1", "low"), ("a-pin1", "pinned")):
        k8s.pod(name, units=50, node=a, priority=priority)
        k8s.bound(name)
    k8s.pod("b-mid", units=90, node=b, priority="mid")
    k8s.bound("b-mid")
    k8s.pod("urgent", units=80, priority="high")
    node, assignment = k8s.bound("urgent", timeout=60)
    assert node == b and assignment["containers"][0]["gpus"][0]["units"] == 80
    assert not k8s.exists("b-mid")
    survivors = k8s.pods()
    assert {n for n in survivors} == {"a-low0", "a-pin0", "a-low1", "a-pin1", "urgent"}
    log = extender_log(control_plane)
    decision = [line for line in log.splitlines() if f"preempt for {k8s.namespace}/urgent" in line][-1]
    assert f"{a} dropped" in decision and f"{b} victims [{k8s.namespace}/b-mid]" in decision, decision
    k8s.assert_no_overcommit()


def test_extender_killed_mid_burst_loses_nothing(k8s, control_plane):
    nodes = [k8s.node(f"n{i}", gpus=4) for i in range(5)]
    rng = random.Random(7)
    names = [k8s.pod(f"burst{i}", units=rng.choice([10, 20, 25, 40, 50])) for i in range(40)]
    k8s.wait(lambda: sum(1 for n, _ in k8s.pods().values() if n) >= 10, "a quarter of the burst to bind")
    control_plane.stop_extender(signal.SIGKILL)
    control_plane.start_extender("--policy", "binpack")
    for name in names:
        k8s.bound(name, timeout=90)
    units = k8s.assert_no_overcommit()
    expected = {}
    for node, assignment in k8s.pods().values():
        for share in assignment["containers"][0]["gpus"]:
            expected[(node, share["index"])] = expected.get((node, share["index"]), 0) + share["units"]
    ledger = {(n, g["index"]): g["unitsUsed"] for n in nodes for g in k8s.inspect()["nodes"][n] if g["unitsUsed"]}
    assert ledger == expected and sum(units.values()) == sum(expected.values())


def test_burst_of_200_pods_on_50_nodes(k8s):
    for i in range(50):
        k8s.node(f"n{i:02d}", gpus=2)
    rng = random.Random(11)
    sizes = [rng.choice([10, 25, 30, 50, 60]) for _ in range(200)]  # ~40% of the 10,000 units
    started = time.monotonic()
    names = [k8s.pod(f"b{i:03d}", units=u) for i, u in enumerate(sizes)]
    for name in names:
        k8s.bound(name, timeout=120)
    elapsed = time.monotonic() - started
    k8s.assert_no_overcommit()
    pods = k8s.pods()
    assert sorted(a["containers"][0]["gpus"][0]["units"] for _, a in pods.values()) == sorted(sizes)
    print(f"200 pods on 50 nodes bound in {elapsed:.1f} s")


def test_deploy_manifests_pass_server_side_dry_run(control_plane):
    api = control_plane.api_client()
    accepted = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            try:
                utils.create_from_dict(api, doc, dry_run="All")
            except utils.FailToCreateError as exc:
                # The namespace and RBAC objects exist already (the harness applied them for real).
                reasons = [json.loads(e.body).get("reason") for e in exc.api_exceptions]
                assert reasons == ["AlreadyExists"], f"{path.name}: {exc}"
            accepted.append(f"{path.name}:{doc['kind']}/{doc['metadata']['name']}")
    kinds = {a.split(":")[1].split("/")[0] for a in accepted}
    assert {"Deployment", "DaemonSet", "ConfigMap", "ClusterRole", "NetworkPolicy", "ServiceAccount"} <= kinds, accepted


def test_scheduler_identity_has_what_it_needs_and_no_more(control_plane):
    api = client.AuthorizationV1Api(control_plane.api_client("scheduler"))

    def allowed(verb, resource, subresource="", group="", namespace="default"):
        review = {"spec": {"resourceAttributes": {"verb": verb, "resource": resource, "subresource": subresource,
                                                  "group": group, "namespace": namespace}}}
        return api.create_self_subject_access_review(review).status.allowed

    assert allowed("create", "pods", "binding") and allowed("watch", "pods") and allowed("list", "nodes")
    assert not allowed("update", "nodes") and not allowed("delete", "secrets") and not allowed("get", "secrets")


def test_extender_stops_cleanly_on_sigterm_and_comes_back(k8s, control_plane):
    # Kubernetes stops a container with SIGTERM; the watch threads once kept the process alive for minutes.
    node = k8s.node("a", gpus=1)
    k8s.pod("before", units=40)
    k8s.bound("before")
    proc = control_plane.processes["extender"]
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(timeout=10) == 0
    control_plane.processes.pop("extender")
    control_plane.start_extender("--policy", "binpack")
    assert k8s.inspect()["nodes"][node][0]["unitsUsed"] == 40  # rebuilt from the annotation
    k8s.pod("after", units=40)
    assert gpus_of(k8s.bound("after")[1]) == [0]


def test_the_api_server_stores_the_handoff_annotations_with_the_binding(k8s):
    k8s.node("h", gpus=2)
    k8s.pod("handoff", units=200)
    _, assignment = k8s.bound("handoff")
    annotations = k8s.read("handoff").metadata.annotations
    uuids = ",".join(share["uuid"] for share in assignment["containers"][0]["gpus"])
    assert annotations["main.containers.fracgpu.io/visible-devices"] == uuids
    assert annotations["main.containers.fracgpu.io/units"] == "100,100"


def test_whatif_on_a_snapshot_of_this_cluster(k8s, tmp_path, capsys):
    nodes = [k8s.node(f"w{i}", gpus=2) for i in range(3)]
    sizes = [60, 60, 30, 50, 40, 70, 25, 45]  # 380 of the 600 units
    for i, units in enumerate(sizes):
        k8s.pod(f"w{i}", units=units, memory_mib=1000)
    for i in range(len(sizes)):
        k8s.bound(f"w{i}")
    # the snapshot as `kubectl get nodes,pods -A -o yaml` writes it (this test's nodes and pods)
    api = k8s.cp.api_client()
    items = [{**api.sanitize_for_serialization(n), "apiVersion": "v1", "kind": "Node"}
             for n in k8s.core.list_node().items if n.metadata.name in nodes]
    items += [{**api.sanitize_for_serialization(p), "apiVersion": "v1", "kind": "Pod"}
              for p in k8s.core.list_namespaced_pod(k8s.namespace).items]
    snapshot = tmp_path / "snapshot.yaml"
    snapshot.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    out = tmp_path / "whatif"
    assert cli.main(["whatif", "--snapshot", str(snapshot), "--policies", "binpack,spread,best-fit,fgd,fgd-lookahead",
                     "--out", str(out), "--anonymize", str(tmp_path / "shared.yaml")]) == 0
    table = {row["policy"]: row for row in csv.DictReader(open(out / "whatif.csv"))}
    assert all(row["placed"] == str(len(sizes)) and row["pending"] == "0" for row in table.values())
    assert {row["GPU units allocated %"] for row in table.values()} == {f"{100 * sum(sizes) / 600:.2f}"}
    # binpack fills GPUs before opening others, spread opens all six
    assert table["binpack"]["idle GPUs"] != "0/6" and table["spread"]["idle GPUs"] == "0/6"
    assert k8s.namespace not in (tmp_path / "shared.yaml").read_text()
    print((out / "report.md").read_text())


def test_the_clusters_own_pool_label_and_its_pods_node_selectors_and_affinity(k8s, control_plane):
    # The seeds' three-pool layout: node.kubernetes.io/gpu-pool with a matching NoSchedule taint on every node;
    # pods choose their pool as their manifests already do, with a nodeSelector or a required node affinity.
    key = "node.kubernetes.io/gpu-pool"
    control_plane.stop_extender(signal.SIGTERM)
    control_plane.start_extender("--policy", "binpack", "--pool-label", key)
    try:
        nodes = {}
        for pool in ("online-inference", "batch", "training"):
            nodes[pool] = k8s.node(pool[:5], gpus=2, labels={key: pool})
            k8s.core.patch_node(nodes[pool], {"spec": {"taints": [{"key": key, "value": pool, "effect": "NoSchedule"}]}})

        def pod(name, *, selector=None, affinity=None, tolerate=None):
            body = gpu_pod(name, namespace=k8s.namespace, units=30, memory_mib=1000)
            del body["metadata"]["uid"]
            body["spec"].update(schedulerName="fracgpu-scheduler", terminationGracePeriodSeconds=0,
                                tolerations=[{"key": key, "operator": "Exists"}] if tolerate else
                                [{"key": key, "value": p, "effect": "NoSchedule"} for p in nodes])
            if selector:
                body["spec"]["nodeSelector"] = {key: selector}
            if affinity:
                body["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": key, "operator": "In", "values": [affinity]}]}]}}}
            k8s.core.create_namespaced_pod(k8s.namespace, body)

        pod("serve", selector="online-inference")
        pod("etl", selector="batch")
        pod("train", affinity="training")
        assert k8s.bound("serve")[0] == nodes["online-inference"]
        assert k8s.bound("etl")[0] == nodes["batch"]
        assert k8s.bound("train")[0] == nodes["training"]
        # the GPU a pod holds is its pool's: the extender read the pod's pool from its nodeSelector and affinity
        assert [g["pool"] for g in k8s.inspect()["nodes"][nodes["batch"]]] == ["batch", None]
        assert [g["pool"] for g in k8s.inspect()["nodes"][nodes["training"]]] == ["training", None]
        # and the nodes' pools from the cluster's label: a pod that names none fits none of them
        pod("nowhere", tolerate=True)
        message = k8s.failed("nowhere")
        assert "pool" in message, message
    finally:
        control_plane.stop_extender(signal.SIGTERM)
        control_plane.start_extender("--policy", "binpack")


def test_kubectl_fracgpu_shows_who_holds_each_gpu_and_why_a_pod_waits(k8s, control_plane, capsys):
    from extender.kube import kubectl

    nodes = [k8s.node("k0", gpus=2, pool=None), k8s.node("k1", gpus=1)]
    for name, units in (("serve", 60), ("etl", 30), ("train", 100)):
        k8s.pod(name, units=units, memory_mib=2000)
        k8s.bound(name)
    k8s.pod("big", units=100, memory_mib=90_000)  # more memory than any GPU here has
    waiting = k8s.failed("big")
    admin = str(control_plane.kubeconfig("admin"))
    capsys.readouterr()
    assert kubectl.main(["--kubeconfig", admin, "-o", "json", "nodes"]) == 0
    listed = {entry["node"]: entry for entry in json.loads(capsys.readouterr().out) if entry["node"] in nodes}
    inspect = k8s.inspect()["nodes"]
    for node in nodes:  # the same picture as the extender's own ledger
        assert [(g["unitsUsed"], g["memoryChargedMiB"], g["pods"]) for g in listed[node]["gpus"]] == \
            [(g["unitsUsed"], g["memoryChargedMiB"], g["pods"]) for g in inspect[node]]
    assert sum(g["unitsUsed"] for n in nodes for g in listed[n]["gpus"]) == 190
    assert kubectl.main(["--kubeconfig", admin, "nodes"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:4] == ["NODE", "POOL", "GPU", "MODEL"]
    with capsys.disabled():  # the README shows this table
        print("\n".join(line for line in table.splitlines() if line.startswith("NODE") or line.split()[0] in nodes))
    assert kubectl.main(["--kubeconfig", admin, "pod", f"{k8s.namespace}/serve"]) == 0
    shown = capsys.readouterr().out
    assert f"{k8s.namespace}/serve on " in shown and "60 units" in shown
    assert kubectl.main(["--kubeconfig", admin, "pod", f"{k8s.namespace}/big"]) == 0
    assert waiting in capsys.readouterr().out
    assert kubectl.main(["--kubeconfig", admin, "pod", "no-slash"]) == 2
    assert "expected NAMESPACE/NAME" in capsys.readouterr().err
