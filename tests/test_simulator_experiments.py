"""The per-shape cache, the replay experiment, the ``fracgpu-sim`` command line, and the design's invariants at
every event of random simulations."""

from __future__ import annotations

import csv
import gc
import json
import random

import numpy as np
import yaml
import pytest
from hypothesis import given, settings, strategies as st

from extender.core.ledger import UNACCOUNTED, UNLIMITED
from extender.core.policies import POLICIES
from simulator import cli, compare
from simulator.engine import _commonest
from simulator.experiments import inflation
from simulator.policy_specs import PAPER, resolve
from simulator.replay import replay
from simulator.synthetic import synthetic_trace
from simulator.trace import SimPod, dump_jsonl, load_openb_nodes, node_objects, sim_node

from test_simulator import small_trace


# ------------------------------------------------------------------ the per-shape cache decides as evaluate does
@pytest.mark.parametrize("label", [*PAPER, *(f"core:{name}" for name in POLICIES)])
def test_cached_and_uncached_placement_decide_alike(label):
    nodes, pods = small_trace(3)
    spec = resolve(label)
    cached, uncached = (inflation(nodes, pods, spec, seed=5, ratio=1.5, cache=cache) for cache in (True, False))
    assert cached == uncached and cached.placed > 0 and cached.failed


# ------------------------------------------------------------------ replay
def test_replay_waits_then_places_when_capacity_frees():
    node = sim_node("n", cpu_milli=16000, memory_mib=65536, gpus=1, model="G2")
    pods = [SimPod("a", 1000, 1024, 1, 1000, arrival=0.0, duration=100.0),
            SimPod("b", 1000, 1024, 1, 600, arrival=10.0, duration=50.0),
            SimPod("c", 1000, 1024, 1, 400, arrival=20.0, duration=None)]
    result = replay([node], pods, PAPER["best-fit"], seed=1, arrival_scale=1.0)
    assert result.placed == 3 and result.pending_at_end == 0
    assert sorted(result.delays) == [0.0, 80.0, 90.0]  # b and c wait until a completes at t=100
    assert result.failed and result.retries >= 2
    assert result.timeline[-1][1] == pytest.approx(40.0)  # c runs on: 400 of 1000 units
    faster = replay([node], pods, PAPER["best-fit"], seed=1, arrival_scale=10.0)
    assert max(faster.delays) > max(result.delays)  # same work, arrivals ten times closer: longer waits


# ------------------------------------------------------------------ command line
def write_openb(tmp_path, nodes=6, pods=60, seed=0):
    rng = random.Random(seed)
    node_csv = tmp_path / "nodes.csv"
    with open(node_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sn", "cpu_milli", "memory_mib", "gpu", "model"])
        for i in range(nodes):
            w.writerow([f"node-{i}", 64000, 262144, rng.choice([2, 4, 8]), "G2"])
    pod_csv = tmp_path / "pods.csv"
    with open(pod_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "gpu_spec", "qos", "pod_phase",
                    "creation_time", "deletion_time", "scheduled_time"])
        for i in range(pods):
            gpus = rng.choice([0, 1, 1, 2])
            w.writerow([f"pod-{i}", rng.choice([1000, 4000]), 4096, gpus,
                        0 if not gpus else (1000 if gpus > 1 else rng.choice([250, 500, 1000])), "", "LS", "Running",
                        i * 10, i * 10 + 500, ""])
    return node_csv, pod_csv


def test_compare_writes_results_report_and_plots(tmp_path, capsys):
    nodes, pods = write_openb(tmp_path)
    out = tmp_path / "out"
    code = cli.main(["compare", "--nodes", str(nodes), "--pods", str(pods), "--policies", "best-fit,fgd,random",
                     "--seeds", "42-44", "--jobs", "2", "--out", str(out), "--quiet"])
    assert code == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["policy"], r["seed"]) for r in rows] == [(p, str(s)) for p in ("best-fit", "fgd", "random")
                                                        for s in (42, 43, 44)]
    assert all(0 <= float(r["unallocated_at_100_pct"]) <= 100 for r in rows)
    report = (out / "report.md").read_text()
    assert "| best-fit | 3 |" in report and "7.14" not in report  # the paper never ran this trace
    default = pods.with_name("openb_pod_list_default.csv")  # the paper's default trace, by its file name
    pods.rename(default)
    assert cli.main(["compare", "--nodes", str(nodes), "--pods", str(default), "--policies", "best-fit",
                     "--seeds", "42", "--out", str(out), "--quiet", "--no-plots"]) == 0
    assert "7.14" in (out / "report.md").read_text()  # our mean beside the paper's figure
    for png in ("allocation.png", "fragmentation.png", "unallocated.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "unallocated % (mean)" in printed and "fgd" in printed


def test_compare_reads_a_kubernetes_node_list_and_jsonl_pods(tmp_path):
    node_csv, _ = write_openb(tmp_path)
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump(node_objects(load_openb_nodes(node_csv))))
    pods = tmp_path / "synth.jsonl"
    assert cli.main(["synth", "--pods", "60", "--seed", "3", "--out", str(pods)]) == 0
    out = tmp_path / "out"
    assert cli.main(["compare", "--nodes", str(cluster), "--pods", str(pods), "--policies", "best-fit",
                     "--seeds", "42", "--jobs", "1", "--out", str(out), "--quiet", "--no-plots"]) == 0
    from_csv = tmp_path / "from-csv"
    assert cli.main(["compare", "--nodes", str(node_csv), "--pods", str(pods), "--policies", "best-fit",
                     "--seeds", "42", "--jobs", "1", "--out", str(from_csv), "--quiet", "--no-plots"]) == 0
    assert (out / "results.csv").read_text() == (from_csv / "results.csv").read_text()


def test_a_loaded_trace_is_frozen_out_of_full_collections(tmp_path):
    nodes, pods = write_openb(tmp_path)
    before = gc.get_freeze_count()
    try:
        trace = compare._load(compare.Settings(nodes=str(nodes), pods=str(pods)))
        assert gc.get_freeze_count() > before
        pod = trace[1][0]  # a full collection walks generation 2, not the frozen objects
        assert gc.is_tracked(pod) and not any(o is pod for o in gc.get_objects(generation=2))
    finally:
        gc.unfreeze()
        compare._TRACE.clear()


def test_replay_and_synth_commands(tmp_path, capsys):
    nodes, _ = write_openb(tmp_path)
    pods = tmp_path / "synth.jsonl"
    assert cli.main(["synth", "--pods", "80", "--seed", "3", "--out", str(pods)]) == 0
    assert len(pods.read_text().splitlines()) == 80
    out = tmp_path / "replay"
    assert cli.main(["replay", "--nodes", str(nodes), "--pods", str(pods), "--policies", "fgd,gpu-packing",
                     "--arrival-scale", "5", "--out", str(out)]) == 0
    table = list(csv.DictReader(open(out / "replay.csv")))
    assert [r["policy"] for r in table] == ["fgd", "gpu-packing"]
    assert all(int(r["placed"]) + int(r["pending at end"]) == 80 for r in table)
    assert (out / "timeline.png").exists() and "delay p99 s" in capsys.readouterr().out


def run_cli(argv):
    try:
        return cli.main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        return exit_.code


@pytest.mark.parametrize("argv, message", [
    (["compare", "--seeds", "9-3"], "seeds: expected"),
    (["compare", "--policies", "tetris", "--quiet"], "unknown policy 'tetris'"),
    (["compare", "--pods", "/nonexistent.csv", "--quiet"], "nonexistent.csv"),
    (["replay", "--arrival-scale", "0", "--pods", "PODS"], "arrival scale must be positive"),
    (["compare", "--jobs", "0", "--quiet"], "--jobs: expected a whole number of at least 1, not '0'"),
])
def test_bad_input_is_named_with_exit_status_2(argv, message, tmp_path, capsys):
    _, pods = write_openb(tmp_path)
    argv = [str(pods) if a == "PODS" else a for a in argv] + ["--out", str(tmp_path / "o")]
    assert run_cli(argv) == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------ invariants at every event (docs/design.md 1, 5, 6)
def check_invariants(time, cluster):
    ledger = cluster.ledger
    rows = cluster._rows
    # 1: per GPU, units and memory within capacity; host CPU and memory within the node's
    assert (ledger.used_units[rows] <= ledger.offered_units[rows]).all()
    assert (ledger.used_mem[rows] <= ledger.mem_usable[rows]).all()
    accounted = ledger.cpu_total[rows] != UNACCOUNTED
    assert (ledger.cpu_used[rows][accounted] <= ledger.cpu_total[rows][accounted]).all()
    assert (ledger.host_mem_used[rows] <= np.maximum(ledger.host_mem_total[rows], 0)).all()
    # the host room placement filters on is kept equal to capacity less use (unlimited where not accounted)
    for room, total, used in ((ledger.cpu_room, ledger.cpu_total, ledger.cpu_used),
                              (ledger.host_mem_room, ledger.host_mem_total, ledger.host_mem_used)):
        assert (room[rows] == np.where(total[rows] == UNACCOUNTED, UNLIMITED, total[rows] - used[rows])).all()
    # and so is the free units total that policies read per node
    assert (ledger.free_units_sum[rows] == np.maximum(ledger.free_units[rows], 0).sum(axis=1)).all()
    # the simulator's own count agrees with the ledger's, and each pod shape's misfit tally with its codes
    assert cluster.allocated == int(ledger.used_units[rows].sum())
    for entry in cluster._shapes.values():
        assert np.array_equal(entry.counts, np.bincount(entry.code, minlength=len(entry.counts)))
        assert entry.reason() == _commonest(entry.misfit_counts())  # the kept reason, against a fresh one


# the paper's policies and the one that beats FGD (fgd-lookahead)
LABELS = [*sorted(PAPER), "fgd-lookahead"]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), label=st.sampled_from(LABELS), scale=st.sampled_from([1.0, 20.0, 500.0]))
def test_invariants_hold_at_every_event_of_random_replays(seed, label, scale):
    nodes, _ = small_trace(seed % 7)
    pods = synthetic_trace(120, seed=seed, rate=0.05, median_duration=600)
    events, clusters = [], []
    result = replay(nodes, pods, resolve(label), seed=seed, arrival_scale=scale,
                    observer=lambda t, c: (check_invariants(t, c), events.append(t), clusters.append(c)))
    assert events == sorted(events) and len(events) >= len(pods)
    assert result.placed + result.pending_at_end == len(pods)
    assert all(d >= 0 for d in result.delays)
    # 5: releasing returns everything: synthetic pods all end, so the cluster ends empty (pods that fit no
    # node, a model the cluster lacks, stay pending)
    ledger = clusters[-1].ledger
    assert result.timeline[-1][1] == 0.0
    assert ledger.used_units.sum() == ledger.used_mem.sum() == ledger.cpu_used.sum() == ledger.host_mem_used.sum() == 0


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), label=st.sampled_from(LABELS))
def test_same_seed_same_replay_bit_for_bit(seed, label):
    nodes, _ = small_trace(seed % 5)
    pods = synthetic_trace(80, seed=seed, rate=0.1)
    first = replay(nodes, pods, resolve(label), seed=seed, arrival_scale=3.0)
    again = replay(nodes, pods, resolve(label), seed=seed, arrival_scale=3.0)
    assert first == again


def test_synthetic_trace_is_seeded_and_round_trips(tmp_path):
    a, b = synthetic_trace(200, seed=4), synthetic_trace(200, seed=4)
    assert a == b and a != synthetic_trace(200, seed=5)
    assert {p.gpu_count for p in a} >= {0, 1, 2} and any(p.models for p in a)
    path = tmp_path / "t.jsonl"
    dump_jsonl(a, path)
    assert [json.loads(line)["name"] for line in path.read_text().splitlines()] == [p.name for p in a]
