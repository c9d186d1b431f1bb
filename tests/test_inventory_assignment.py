"""Node inventories and pod assignments: the two annotations, read strictly and with useful errors."""

import json

import pytest

from extender.core import CoreSettings, CorruptAnnotation, parse_node
from extender.core.assignment import Assignment, ContainerAssignment, GpuShare, from_annotation, to_annotation
from extender.core.settings import GPUS_ANNOTATION
from extender.testing.factories import gpu_node

S = CoreSettings()


def test_annotation_inventory_is_read_in_index_order():
    node = gpu_node("a", gpus=2, memory_mib=40960, model="NVIDIA A100-SXM4-40GB", pool="infer",
                    links=[["X", "NV12"], ["NV12", "X"]], unhealthy=[1], used_memory_mib={0: 1024})
    record = json.loads(node["metadata"]["annotations"][GPUS_ANNOTATION])
    record["gpus"].reverse()  # the agent may list GPUs in any order
    record["links"] = [["X", "NV12"], ["NV12", "X"]]
    node["metadata"]["annotations"][GPUS_ANNOTATION] = json.dumps(record)
    inventory = parse_node(node, S)
    assert [g.index for g in inventory.gpus] == [0, 1]
    assert inventory.gpus[0].used_memory_mib == 1024 and not inventory.gpus[1].healthy
    assert inventory.pool == "infer" and inventory.links[0][1] == "NV12" and inventory.source == "annotation"


def test_gfd_labels_when_no_annotation():
    node = {"metadata": {"name": "g", "labels": {"nvidia.com/gpu.count": "4", "nvidia.com/gpu.memory": "15360",
                                                 "nvidia.com/gpu.product": "Tesla-T4"}}}
    inventory = parse_node(node, S)
    assert [(g.index, g.memory_mib, g.model, g.uuid) for g in inventory.gpus] == [
        (i, 15360, "Tesla-T4", None) for i in range(4)]
    assert inventory.source == "gfd" and inventory.links is None


def test_node_without_gpu_information_is_not_a_gpu_node():
    assert parse_node({"metadata": {"name": "cpu-only"}}, S) is None


def _node_with(raw):
    return {"metadata": {"name": "bad", "annotations": {GPUS_ANNOTATION: raw}}}


def _inventory(**changes):
    record = {"version": 1, "unitsPerGpu": 100,
              "gpus": [{"index": 0, "uuid": "GPU-0", "memoryMiB": 1000}, {"index": 1, "uuid": "GPU-1", "memoryMiB": 1000}]}
    record.update(changes)
    return json.dumps(record)


CORRUPT_NODES = [
    ("not JSON", _node_with("{gpus"), "is not JSON"),
    ("not a string", _node_with({"version": 1}), "must be a JSON string"),
    ("unknown version", _node_with(_inventory(version=2)), "version"),
    ("negative memory", _node_with(_inventory(gpus=[{"index": 0, "memoryMiB": -5}])), "gpus.0.memoryMiB"),
    ("duplicate index", _node_with(_inventory(gpus=[{"index": 0, "memoryMiB": 5}, {"index": 0, "memoryMiB": 5}])),
     "GPU indexes must be unique"),
    ("links not square", _node_with(_inventory(links=[["X"]])), "links must be a 2x2 matrix"),
    ("unknown link", _node_with(_inventory(links=[["X", "WARP"], ["WARP", "X"]])), "unknown link code 'WARP'"),
    ("asymmetric links", _node_with(_inventory(links=[["X", "NV1"], ["SYS", "X"]])), "links must be symmetric"),
    ("units mismatch", _node_with(_inventory(unitsPerGpu=10)), "unitsPerGpu=10 but the extender is configured with"),
    ("bad GFD count", {"metadata": {"name": "bad", "labels": {"nvidia.com/gpu.count": "x", "nvidia.com/gpu.memory": "1"}}},
     "nvidia.com/gpu.count"),
    ("no name", {"metadata": {}}, "metadata.name is missing"),
]


@pytest.mark.parametrize("name, node, message", CORRUPT_NODES, ids=[c[0] for c in CORRUPT_NODES])
def test_corrupt_inventory_names_the_problem(name, node, message):
    with pytest.raises(CorruptAnnotation) as error:
        parse_node(node, S)
    assert message in str(error.value)


def _assignment(containers):
    return Assignment(pod_uid="u1", namespace="ns", name="p", node="n", pool=None, policy="binpack",
                      containers=tuple(containers))


def test_assignment_round_trip():
    assignment = _assignment([ContainerAssignment(name="main", kind="app", gpus=(GpuShare(0, "GPU-0", 40, 4000),
                                                                  GpuShare(3, "GPU-3", 40, 4000)))])
    raw = to_annotation(assignment, timestamp="2026-11-21T00:00:00Z")
    assert from_annotation(raw, pod_uid="u1", namespace="ns", name="p") == assignment
    assert json.loads(raw)["version"] == 1 and json.loads(raw)["podUID"] == "u1"


def test_charges_take_the_maximum_over_phases():
    # init 80 units on GPU 0; then sidecar 10 + main 30 on GPU 0 and main alone... per GPU and per resource:
    # GPU 0 units = max(80, 10 + 30) = 80, MiB = max(1000, 500 + 3000) = 3500; GPU 1 only main: 30 / 3000
    assignment = _assignment([
        ContainerAssignment(name="warmup", kind="init", gpus=(GpuShare(0, None, 80, 1000),)),
        ContainerAssignment(name="proxy", kind="sidecar", gpus=(GpuShare(0, None, 10, 500),)),
        ContainerAssignment(name="main", kind="app", gpus=(GpuShare(0, None, 30, 3000), GpuShare(1, None, 30, 3000))),
    ])
    assert assignment.charges() == {0: (80, 3500), 1: (30, 3000)}


@pytest.mark.parametrize(
    "raw, message",
    [("nope", "is not JSON"), ('{"version": 1}', "podUID"), (7, "must be a JSON string"),
     ('{"version":1,"podUID":"u1","node":"n","policy":"b","containers":[]}', "containers"),
     ('{"version":1,"podUID":"u1","node":"n","policy":"b","containers":[{"name":"m","gpus":[{"index":0,"units":-1,"memoryMiB":0}]}]}',
      "units"),
     ('{"version":1,"podUID":"u1","node":"n","policy":"b","containers":[{"name":"m","gpus":[{"index":0,"units":1,"memoryMiB":0},{"index":0,"units":1,"memoryMiB":0}]}]}',
      "distinct"),
     ('{"version":1,"podUID":"other","node":"n","policy":"b","containers":[{"name":"m","gpus":[]}]}', "copied?")],
)
def test_corrupt_assignment(raw, message):
    with pytest.raises(CorruptAnnotation) as error:
        from_annotation(raw, pod_uid="u1", namespace="ns", name="p")
    assert message in str(error.value) and "pod ns/p" in str(error.value)


def test_a_bound_pod_is_adopted_whatever_the_pool_settings_read_from_it():
    # The pool is not part of what adoption checks (the assignment keeps the pool it was placed in): a pod bound
    # before the extender restarted with another --pool-label keeps its GPUs, even if that label now reads as
    # nonsense on it (a number, which a new pod would be refused for).
    from extender.core.loading import build_ledger
    from extender.testing.factories import gpu_pod

    settings = CoreSettings(pool_label="karpenter.sh/nodepool")
    pod = gpu_pod("p", units=60)
    pod["metadata"]["labels"] = {"karpenter.sh/nodepool": 5}
    pod["spec"]["nodeName"] = "n"
    pod["metadata"]["annotations"]["fracgpu.io/assignment"] = to_annotation(Assignment(
        pod_uid=pod["metadata"]["uid"], namespace="default", name="p", node="n", pool=None, policy="binpack",
        containers=(ContainerAssignment(name="main", kind="app", gpus=(GpuShare(0, "GPU-n-0", 60, 49152),)),)))
    ledger, report = build_ledger(settings, [gpu_node("n", gpus=1)], [pod])
    assert report.pods == 1 and not report.warnings, report.warnings
    assert ledger.gpu_table("n")[0]["unitsUsed"] == 60
