"""``fracgpu-sim whatif``: a snapshot's GPU pods placed again per policy; anonymised snapshots."""

import json

import yaml

from extender.core import CoreSettings
from extender.core.settings import ASSIGNMENT_ANNOTATION, GPUS_ANNOTATION
from extender.testing.factories import gpu_node, gpu_pod
from simulator import cli
from simulator.whatif import anonymize, load_snapshot, what_if

S = CoreSettings()


def snapshot_file(tmp_path):
    """Two 1-GPU nodes of 100 units; pods created in the order a (60 units), b (60), c (30), d (50: no GPU has
    that much left), e (150: more than a GPU, not a valid request), and a CPU-only pod; a is already bound with
    an assignment, which the what-if ignores (it places a again)."""
    nodes = [gpu_node("n1", gpus=1), gpu_node("n2", gpus=1)]
    nodes[0]["metadata"]["labels"]["team"] = "secret-team"
    pods = []
    for name, units, minute in (("b", 60, 2), ("a", 60, 1), ("d", 50, 4), ("c", 30, 3), ("e", 150, 5)):
        pod = gpu_pod(name, units=units, namespace="prod")
        pod["metadata"]["creationTimestamp"] = f"2026-12-07T10:0{minute}:00Z"
        pod["spec"]["containers"][0]["image"] = "registry.internal/model:7"
        pods.append(pod)
    pods[1]["spec"]["nodeName"] = "n2"
    pods[1]["metadata"]["annotations"][ASSIGNMENT_ANNOTATION] = '{"stale": "assignment-xyz"}'
    cpu_only = gpu_pod("web", namespace="prod")
    cpu_only["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1"}}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": nodes + pods + [cpu_only]}))
    return path


def test_gpu_pods_are_placed_again_in_creation_order_per_policy(tmp_path):
    snapshot = load_snapshot(snapshot_file(tmp_path), S)
    assert [p.name for p in snapshot.pods] == ["a", "b", "c", "d"]  # by creation time; the CPU-only pod is not one
    assert [pod for pod, _ in snapshot.skipped] == ["prod/e"] and "150" in snapshot.skipped[0][1]
    binpack, spread = what_if(snapshot, ["binpack", "spread"], S)
    # binpack: c joins a (90 units on one GPU), b alone; spread: a and b one GPU each, c with one of them.
    # Either way d (50) finds at most 40 free.
    assert (binpack.placed, spread.placed) == (3, 3)
    assert binpack.pending_pods == spread.pending_pods == [("prod/d", next(iter(binpack.pending)))]
    assert binpack.allocated_pct == spread.allocated_pct == 75.0
    assert binpack.idle_gpus == spread.idle_gpus == 0
    # stranded: free units on used GPUs below the smallest request (30 units): the 10 left beside a and c
    assert binpack.stranded_pct == spread.stranded_pct == 5.0


def test_an_anonymised_snapshot_hides_names_and_places_alike(tmp_path):
    path = snapshot_file(tmp_path)
    data = yaml.safe_load(path.read_text())
    shared = anonymize([i for i in data["items"] if i["kind"] == "Node"], [i for i in data["items"] if i["kind"] == "Pod"],
                       S)
    text = yaml.safe_dump(shared)
    for secret in ("n1", "n2", "prod", "secret-team", "registry.internal", "GPU-n1-0", "assignment-xyz"):
        assert secret not in text, secret
    inventory = json.loads(shared["items"][0]["metadata"]["annotations"][GPUS_ANNOTATION])
    assert [g["uuid"] for g in inventory["gpus"]] == ["GPU-node-1-0"]
    copy = tmp_path / "shared.yaml"
    copy.write_text(text)
    original = what_if(load_snapshot(path, S), ["binpack", "fgd-lookahead"], S)
    anonymous = what_if(load_snapshot(copy, S), ["binpack", "fgd-lookahead"], S)
    assert [(r.placed, r.allocated_pct, r.stranded_pct, dict(r.pending)) for r in original] == \
        [(r.placed, r.allocated_pct, r.stranded_pct, dict(r.pending)) for r in anonymous]
    # d, the fifth by creation (the CPU-only pod has no creation time and comes first)
    assert [pod for pod, _ in anonymous[0].pending_pods] == ["ns-1/pod-5"]


def test_the_command_writes_the_table_and_names_bad_input(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["whatif", "--snapshot", str(snapshot_file(tmp_path)), "--policies", "binpack,fgd",
                     "--out", str(out), "--anonymize", str(tmp_path / "anon.yaml")]) == 0
    report = (out / "report.md").read_text()
    assert "| binpack | 3 | 1 |" in report and "Pending under fgd:" in report
    assert (tmp_path / "anon.yaml").exists() and "prod/d" in (out / "pending.csv").read_text()
    assert cli.main(["whatif", "--snapshot", str(tmp_path / "missing.yaml"), "--out", str(out)]) == 2
    assert "missing.yaml: cannot read" in capsys.readouterr().err


def test_a_snapshot_of_the_openb_trace_repeats_it_past_its_end():
    from simulator.whatif import openb_snapshot

    snapshot = openb_snapshot(7070, CoreSettings(units_per_gpu=1000))
    pods = [i for i in snapshot["items"] if i["kind"] == "Pod"]
    nodes = [i for i in snapshot["items"] if i["kind"] == "Node"]
    assert len(nodes) == 1213 and len(pods) == 7070 and len({p["metadata"]["name"] for p in pods}) == 7070
    assert [p["metadata"]["name"].endswith("-copy-1") for p in pods[-7:]] == [False] + [True] * 6
    stamps = [p["metadata"]["creationTimestamp"] for p in pods]
    assert stamps == sorted(stamps)  # copies are created after the trace's own pods
    limits = {k for p in pods for c in p["spec"]["containers"] for k in c["resources"]["limits"]}
    assert limits == {"fracgpu.io/vgpu"}


def test_anonymised_pools_taints_and_equal_creation_times_place_alike(tmp_path):
    settings = CoreSettings(pool_label="karpenter.sh/nodepool")
    key = "karpenter.sh/nodepool"
    nodes = [gpu_node("n1", gpus=1), gpu_node("n2", gpus=1)]
    nodes[0]["metadata"]["labels"][key] = "acme-fraud"
    nodes[0]["spec"] = {"taints": [{"key": "dedicated", "value": "acme-team", "effect": "NoSchedule"}]}
    pods = []
    for i in range(12):  # created in the same second: the order between them is the names'
        pod = gpu_pod(f"job-{i}", units=30, namespace="acme")
        pod["metadata"]["creationTimestamp"] = "2026-12-07T10:00:00Z"
        if i % 2:
            pod["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": key, "operator": "In", "values": ["acme-fraud"]}]}]}}}
        pods.append(pod)
    original = tmp_path / "original.yaml"
    original.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": nodes + pods}))
    shared = tmp_path / "shared.yaml"
    shared.write_text(yaml.safe_dump(anonymize(nodes, pods, settings)))
    assert "acme" not in shared.read_text() and "2026" not in shared.read_text()
    before = what_if(load_snapshot(original, settings), ["binpack", "spread"], settings)
    after = what_if(load_snapshot(shared, settings), ["binpack", "spread"], settings)
    assert [(r.placed, dict(r.pending)) for r in before] == [(r.placed, dict(r.pending)) for r in after]
    assert before[0].placed == 6  # three pool pods on n1, three pool-less ones on n2; the rest wait
