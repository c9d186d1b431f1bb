"""The simulator's foundations: host CPU/memory in the core, the trace readers, the event queue, and the
inflation experiment's determinism (FGD's own tests are in tests/policies/test_fgd.py)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import yaml
from hypothesis import given, settings, strategies as st

from extender.core import Ledger, evaluate
from extender.core.policies import View, make_policy
from extender.core.policies.fgd import Fgd
from simulator.engine import ARRIVE, COMPLETE, RETRY, EventQueue, SimCluster
from simulator.experiments import FragmentationMeter, inflate, inflation, workload_of
from simulator.trace import (SETTINGS, SimPod, TraceError, dump_jsonl, load_cluster_file, load_jsonl, load_openb_nodes,
                             load_openb_pods, node_objects, sim_node, default_path)


def cpu_pod(name, cpu, **kw):
    return SimPod(name=name, cpu_milli=cpu, memory_mib=kw.pop("memory_mib", 0), gpu_count=kw.pop("gpus", 0),
                  gpu_milli=kw.pop("milli", 0), **kw)


# ------------------------------------------------------------------ host resources in the core
def test_host_cpu_and_memory_are_checked_charged_and_released():
    ledger = Ledger(SETTINGS)
    ledger.upsert_node(sim_node("a", cpu_milli=4000, memory_mib=8192, gpus=1, model="T4"))
    ledger.upsert_node(sim_node("cpu", cpu_milli=8000, memory_mib=8192, gpus=0, model=None))
    policy = make_policy("best-fit")
    first = cpu_pod("p1", 3000, gpus=1, milli=300).request()
    evaluation = evaluate(ledger, first, ["a", "cpu"], policy)
    assert evaluation.fits == ["a"]
    ledger.reserve(evaluation.placement("a").assignment(first, "best-fit"))
    second = cpu_pod("p2", 2000, gpus=1, milli=300).request()
    evaluation = evaluate(ledger, second, ["a"], policy)
    assert evaluation.fits == [] and "insufficient node CPU" in evaluation.failed["a"]
    assert "cpu (milli): asked 2000, free 1000" in evaluation.misfit("a").explain()
    only_cpu = cpu_pod("c", 6000, memory_mib=4096).request()
    evaluation = evaluate(ledger, only_cpu, ["a", "cpu"], policy)
    assert evaluation.fits == ["cpu"] and evaluation.placement("cpu").containers == ()
    ledger.release("p1")
    assert ledger.cpu_used[ledger.row_of("a")] == 0
    assert evaluate(ledger, second, ["a"], policy).fits == ["a"]


def test_nodes_without_host_capacity_are_not_checked():  # the extender's nodes: kube-scheduler checks CPU
    from extender.testing.factories import gpu_node
    from extender.core import CoreSettings
    from extender.core.loading import build_ledger

    ledger, _ = build_ledger(CoreSettings(), [gpu_node("g", gpus=1, memory_mib=16384)], [])
    pod = cpu_pod("p", 10**9, gpus=1, milli=50).request()
    assert evaluate(ledger, pod, ["g"], make_policy("binpack")).fits == ["g"]



# ------------------------------------------------------------------ traces
def test_the_embedded_openb_trace_loads_whole():
    nodes, pods = load_openb_nodes(), load_openb_pods()
    assert len(nodes) == 1213 and sum(len(n.gpus) for n in nodes) == 6212 and all(n.gpus for n in nodes)
    assert len(load_openb_nodes(default_path("openb_node_list_all_node.csv"))) == 1523
    assert len(pods) == 8152 and sum(p.gpu_count == 0 for p in pods) == 1088
    assert pods[0].arrival == 0.0 and pods[0].duration == 12537496.0


def test_bad_csv_rows_are_reported_with_file_and_line(tmp_path):
    path = tmp_path / "pods.csv"
    path.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,creation_time\n"
                    "ok,1000,10,1,500,,0\n"
                    "bad-milli,1000,10,1,1500,,0\n"
                    "ok,1000,10,1,500,,0\n"
                    "multi-share,1000,10,2,500,,0\n"
                    "text,lots,10,1,500,,0\n")
    with pytest.raises(TraceError) as caught:
        load_openb_pods(path)
    text = str(caught.value)
    assert "4 bad row(s)" in text
    for line, what in ((3, "gpu_milli must be 0..1000"), (4, "duplicate"), (5, "whole GPUs"),
                       (6, "cpu_milli must be an integer")):
        assert f"{path}:{line}: " in text and what in text


def test_a_trace_of_only_the_required_columns_loads_for_compare_and_replay_says_what_it_lacks(tmp_path):
    """The multigpu traces have name, cpu_milli, memory_mib, num_gpu, gpu_milli and nothing else."""
    from simulator.policy_specs import PAPER
    from simulator.replay import replay

    path = tmp_path / "pods.csv"
    path.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\n"
                    "two,8000,16384,2,1000\nshare,4000,8192,1,500\ncpu,1000,10,0,0\n")
    pods = load_openb_pods(path)
    assert [(p.name, p.gpu_count, p.gpu_milli, p.models, p.arrival, p.duration) for p in pods] == [
        ("two", 2, 1000, None, None, None), ("share", 1, 500, None, None, None), ("cpu", 0, 0, None, None, None)]
    nodes = [sim_node(n, cpu_milli=64000, memory_mib=1 << 20, gpus=4, model="G2") for n in ("a", "b")]
    assert inflation(nodes, pods, PAPER["fgd"], seed=1, ratio=1.0).placed > 0
    with pytest.raises(ValueError, match=r"replay needs each pod's arrival time, and 3 of 3 pods have none \(an "
                                         r"openb trace without its creation_time column\): use compare"):
        replay(nodes, pods, PAPER["fgd"], seed=1)
    dump_jsonl(pods, tmp_path / "pods.jsonl")
    assert load_jsonl(tmp_path / "pods.jsonl") == pods  # no arrival stays no arrival
    path.write_text("name,cpu_milli,memory_mib,num_gpu\nx,1,1,0\n")
    with pytest.raises(TraceError, match=r"pods.csv:1: missing column\(s\) gpu_milli"):
        load_openb_pods(path)


def test_jsonl_round_trip_and_errors(tmp_path):
    pods = [cpu_pod("a", 1000, gpus=1, milli=250, models=("T4", "A10"), arrival=1.5, duration=60.0),
            cpu_pod("b", 500, memory_mib=128)]
    path = tmp_path / "pods.jsonl"
    dump_jsonl(pods, path)
    assert load_jsonl(path) == pods
    path.write_text('{"name": "x", "gpu_count": 1}\n{not json}\n{"name": "y", "colour": 1}\n')
    with pytest.raises(TraceError) as caught:
        load_jsonl(path)
    text = str(caught.value)
    assert f"{path}:1: gpu_count 1 and gpu_milli 0" in text and f"{path}:2: not JSON" in text
    assert f"{path}:3: unknown field(s) colour" in text


def test_cluster_files_are_node_lists_the_simulator_reads_back(tmp_path):
    nodes = [sim_node("g", cpu_milli=96000, memory_mib=262144, gpus=2, model="T4"),
             sim_node("c", cpu_milli=32000, memory_mib=65536, gpus=0, model=None)]
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(node_objects(nodes)))
    back = load_cluster_file(path)
    assert [(n.name, n.cpu_milli, n.memory_mib, len(n.gpus)) for n in back] == \
        [("g", 96000, 262144, 2), ("c", 32000, 65536, 0)]
    path.write_text(json.dumps({"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "x", "annotations": {
        "fracgpu.io/gpus": "{broken"}}}]}))
    with pytest.raises(TraceError, match="item 1"):
        load_cluster_file(path)


# ------------------------------------------------------------------ engine and experiments
def test_event_queue_orders_by_time_then_priority_then_insertion():
    queue = EventQueue()
    for time, priority, event in ((5, ARRIVE, "a5"), (1, RETRY, "r1"), (1, ARRIVE, "a1"), (1, COMPLETE, "c1"),
                                  (1, ARRIVE, "a1b")):
        queue.push(time, priority, event)
    assert [queue.pop()[2] for _ in range(len(queue))] == ["c1", "a1", "a1b", "r1", "a5"]
    with pytest.raises(ValueError, match="before now"):
        queue.push(0, ARRIVE, "late")


def small_trace(seed=0):
    rng = random.Random(seed)
    nodes = [sim_node(f"n{i:02d}", cpu_milli=rng.choice([32000, 96000]), memory_mib=262144,
                      gpus=rng.choice([0, 2, 8]), model="G2") for i in range(20)]
    pods = [cpu_pod(f"p{i:03d}", rng.choice([2000, 8000, 12000]), memory_mib=4096,
                    gpus=(g := rng.choice([0, 1, 1, 1, 2])), milli=0 if not g else (1000 if g > 1 else rng.choice(
                        [250, 470, 810, 1000]))) for i in range(150)]
    return nodes, pods


@pytest.mark.parametrize("policy", ["best-fit", "fgd", "random"])
def test_same_seed_same_result_bit_for_bit(policy):
    nodes, pods = small_trace()

    def make(seed, workload):
        return make_policy("fgd", workload=workload) if policy == "fgd" else (
            make_policy("random", seed=seed) if policy == "random" else make_policy(policy))

    a = inflation(nodes, pods, make, seed=7)
    b = inflation(nodes, pods, make, seed=7)
    c = inflation(nodes, pods, make, seed=8)
    assert a == b
    assert [x.allocated_pct for x in a.curve] != [x.allocated_pct for x in c.curve]
    assert a.placed + sum(a.failed.values()) == a.pods
    arrived = [x.arrived_pct for x in a.curve]
    assert arrived == sorted(arrived) and all(x >= k for k, x in enumerate(arrived, start=1))


def test_inflation_stops_before_passing_the_ratio():
    nodes, pods = small_trace()
    capacity = sum(len(n.gpus) for n in nodes) * 1000
    order = inflate(pods, capacity, 2.0, random.Random(1))
    assert sorted(p.name for p in order[: len(pods)]) == sorted(p.name for p in pods)
    assert 2.0 * capacity - 2000 <= sum(p.total_milli for p in order) <= 2.0 * capacity + 1000
    assert any("-copy-" in p.name for p in order)
    down = inflate(pods, capacity, 0.5, random.Random(1))  # the trace asks for more: random pods dropped
    assert sum(p.total_milli for p in down) <= 0.5 * capacity and len(down) < len(pods)


def test_sim_cluster_never_over_commits_and_removal_frees():
    nodes, pods = small_trace(2)
    cluster = SimCluster(nodes, make_policy("gpu-packing"), rng=random.Random(0))
    placed = [p.name for p in pods if cluster.place(p, p.name).node]
    ledger = cluster.ledger
    assert (ledger.used_units <= ledger.offered_units).all() and (ledger.cpu_used <= np.maximum(ledger.cpu_total, 0)).all()
    for name in placed:
        cluster.remove(name)
    assert cluster.allocated == 0 and ledger.used_units.sum() == 0 and ledger.cpu_used.sum() == 0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), every=st.integers(1, 40))
def test_fragmentation_meter_kept_per_node_equals_measuring_every_node(seed, every):
    # The inflation checkpoints work out fragmentation again only for nodes whose row changed; the values and
    # their sum must be those of measuring every node afresh, at any reading, placements and removals between.
    nodes, pods = small_trace(seed % 5)
    workload = workload_of(pods)
    cluster = SimCluster(nodes, make_policy("best-fit"), rng=random.Random(seed))
    meter, fresh = FragmentationMeter(Fgd(workload)), Fgd(workload)
    rng, placed, readings = random.Random(seed), [], 0
    for i, pod in enumerate(pods):
        if placed and rng.random() < 0.2:
            cluster.remove(placed.pop(rng.randrange(len(placed))))
        if cluster.place(pod, pod.name).node:
            placed.append(pod.name)
        if i % every == 0:
            free, cpu, rows = cluster.free_units_by_node()
            kept = meter.per_node(cluster, free, cpu, rows).copy()
            afresh = fresh.fragmentation(free, cpu, fresh.shape_access(View(cluster.ledger, rows)))
            assert kept.tolist() == afresh.tolist() and float(kept.sum()) == float(afresh.sum())
            readings += 1
    assert readings and placed


def test_the_papers_figures_are_those_of_the_trace_compared():
    from simulator.policy_specs import paper_figures

    assert paper_figures(None)["fgd"] == 4.77  # the embedded default trace
    assert paper_figures("/data/openb_pod_list_multigpu20.csv")["fgd"] == 4.47
    assert paper_figures("/data/openb_pod_list_gpushare20.csv") == {}  # never published
    assert paper_figures("my-pods.jsonl") == {}
