"""The ledger: headroom arithmetic, reserve / commit / release, adoption of what already runs, rebuilds."""

import numpy as np
import pytest

from extender.core import CoreSettings, Ledger, LedgerConflict, evaluate, make_policy, parse_node, parse_pod
from extender.core.assignment import Assignment, ContainerAssignment, GpuShare, to_annotation
from extender.core.loading import build_ledger
from extender.core.rows import RowMemo
from extender.core.settings import ASSIGNMENT_ANNOTATION
from extender.testing.factories import gpu_node, gpu_pod

S = CoreSettings(reserve_mib=500, reserve_percent=0.0)


def ledger_with(*nodes, settings=S):
    ledger, report = build_ledger(settings, nodes, [])
    assert report.warnings == []
    return ledger


def share(node="n", uid="u1", index=0, units=40, memory=4000, pool=None, kind="app", uuid=None):
    return Assignment(pod_uid=uid, namespace="ns", name=uid, node=node, pool=pool, policy="binpack",
                      containers=(ContainerAssignment(name="main", kind=kind,
                                                      gpus=(GpuShare(index, uuid, units, memory),)),))


def free(ledger, node, index):
    row = ledger.row_of(node)
    return int(ledger.free_units[row, index]), int(ledger.free_mem[row, index])


def test_headroom_is_capacity_minus_max_of_charged_and_observed_minus_reserve():
    ledger = ledger_with(gpu_node("n", gpus=2, memory_mib=16000, used_memory_mib={0: 6000}))
    # GPU 0: 16000 - max(0, 6000) - 500 = 9500; GPU 1: 16000 - 0 - 500 = 15500
    assert free(ledger, "n", 0) == (100, 9500) and free(ledger, "n", 1) == (100, 15500)
    ledger.reserve(share(memory=4000))
    # charged 4000 < observed 6000: still 9500
    assert free(ledger, "n", 0) == (60, 9500)
    ledger.reserve(share(uid="u2", memory=5000))
    # charged 9000 > observed 6000: 16000 - 9000 - 500 = 6500
    assert free(ledger, "n", 0) == (20, 6500)


def test_unhealthy_and_mig_gpus_offer_nothing():
    ledger = ledger_with(gpu_node("n", gpus=3, memory_mib=16000, unhealthy=[1], mig=[2]))
    assert free(ledger, "n", 1) == (0, 0) and free(ledger, "n", 2) == (0, 0)
    with pytest.raises(LedgerConflict, match="GPU 1: asks 40 units, 0 free"):
        ledger.reserve(share(index=1))


def test_reserve_commit_release_returns_everything():
    ledger = ledger_with(gpu_node("n", gpus=1, memory_mib=16000))
    before = ledger.snapshot()
    ledger.reserve(share())
    assert ledger.is_reserved("u1")
    ledger.commit("u1")
    assert not ledger.is_reserved("u1") and free(ledger, "n", 0) == (60, 11500)
    assert ledger.release("u1").pod_uid == "u1"
    assert ledger.snapshot() == before and ledger.release("u1") is None


@pytest.mark.parametrize(
    "assignment, message",
    [(share(units=101), "asks 101 units, 100 free"),
     (share(memory=15501), "asks 15501 MiB, 15500 MiB free"),
     (share(node="elsewhere"), "node elsewhere cannot take pods"),
     (share(index=7), "no such GPU"),
     (share(pool="train"), "is in pool None, the pod in pool 'train'"),
     (share(uid=""), "without a pod UID")],
)
def test_reserve_refuses_what_does_not_fit_and_changes_nothing(assignment, message):
    ledger = ledger_with(gpu_node("n", gpus=1, memory_mib=16000))
    before = ledger.snapshot()
    with pytest.raises(LedgerConflict, match=message):
        ledger.reserve(assignment)
    assert ledger.snapshot() == before


def test_double_reservation_is_refused():
    ledger = ledger_with(gpu_node("n", gpus=1, memory_mib=16000))
    ledger.reserve(share())
    with pytest.raises(LedgerConflict, match="already holds GPUs on node n"):
        ledger.reserve(share(units=10))
    with pytest.raises(LedgerConflict, match="no reservation to commit"):
        ledger.commit("nobody")


def test_gpu_pool_isolation_inside_one_node():
    # the node changed pools under a running pod: its GPU stays with the old pool until the pod leaves
    ledger = ledger_with(gpu_node("n", gpus=2, memory_mib=16000, pool="a"))
    ledger.reserve(share(pool="a"))
    ledger.upsert_node(parse_node(gpu_node("n", gpus=2, memory_mib=16000, pool="b"), S))
    with pytest.raises(LedgerConflict, match="GPU 0: held by pods of another pool"):
        ledger.reserve(share(uid="u2", pool="b", units=10))
    ledger.reserve(share(uid="u3", pool="b", index=1, units=10))


def test_adopt_records_over_commit_as_found_and_warns():
    ledger = ledger_with(gpu_node("n", gpus=1, memory_mib=16000))
    assert ledger.adopt(share(units=70)) is None
    warning = ledger.adopt(share(uid="u2", units=70))
    assert "over-committed on GPU 0" in warning
    assert free(ledger, "n", 0)[0] == -40  # the truth is kept: nothing more fits there
    assert ledger.adopt(share(uid="u2", units=70)) is None  # adopting the same again is a no-op
    assert free(ledger, "n", 0)[0] == -40


def test_pods_seen_before_their_node_are_charged_when_it_arrives():
    ledger = Ledger(S)
    assert "not known" in ledger.adopt(share(units=30))
    ledger.upsert_node(parse_node(gpu_node("n", gpus=1, memory_mib=16000), S))
    assert free(ledger, "n", 0) == (70, 11500) and ledger.orphans() == {}


def test_uuid_identifies_the_gpu_when_indexes_move():
    ledger = ledger_with(gpu_node("n", gpus=2, memory_mib=16000))
    ledger.reserve(share(index=0, uuid="GPU-n-1", units=30))  # the annotation's uuid wins over its index
    assert free(ledger, "n", 1)[0] == 70 and free(ledger, "n", 0)[0] == 100


def test_excluded_node_keeps_its_pods_and_says_why():
    ledger = ledger_with(gpu_node("n", gpus=1, memory_mib=16000))
    ledger.reserve(share())
    ledger.exclude_node("n", "node n: annotation fracgpu.io/gpus: is not JSON")
    evaluation = evaluate(ledger, parse_pod(gpu_pod("p", units=10), S), ["n"], make_policy("binpack"))
    assert evaluation.unresolvable == {"n": "fracgpu: node excluded: node n: annotation fracgpu.io/gpus: is not JSON"}
    assert ledger.assignment("u1") is not None
    ledger.upsert_node(parse_node(gpu_node("n", gpus=1, memory_mib=16000), S))
    assert free(ledger, "n", 0)[0] == 60 and ledger.problem("n") is None


def test_rebuild_from_pods_skips_terminal_and_unbound_and_reports_corrupt():
    node = gpu_node("n", gpus=1, memory_mib=16000)
    pods = []
    for name, phase, bound, raw in [("run", "Running", True, None), ("done", "Succeeded", True, None),
                                    ("unbound", "Pending", False, None), ("bad", "Running", True, "{oops")]:
        pod = gpu_pod(name, units=20)
        assignment = share(uid=pod["metadata"]["uid"], units=20)
        pod["metadata"]["annotations"][ASSIGNMENT_ANNOTATION] = raw or to_annotation(assignment)
        pod["status"] = {"phase": phase}
        if bound:
            pod["spec"]["nodeName"] = "n"
        pods.append(pod)
    ledger, report = build_ledger(S, [node], pods)
    assert free(ledger, "n", 0)[0] == 80  # only "run" holds 20
    assert report.pods == 1 and len(report.warnings) == 1 and "pod default/bad" in report.warnings[0]


def test_rows_grow_and_widen():
    ledger = Ledger(S, rows=1, width=2)
    for i in range(5):
        ledger.upsert_node(parse_node(gpu_node(f"n{i}", gpus=1 + i, memory_mib=1000), S))
    assert ledger.node_names() == [f"n{i}" for i in range(5)]
    assert int(ledger.gpu_count[ledger.row_of("n4")]) == 5 and ledger.max_node_capacity() == (500, 2500)
    ledger.remove_node("n4")
    assert ledger.max_node_capacity() == (400, 2000)


def test_row_memo_values_stay_right_when_the_ledger_widens():
    """A node with more GPUs than the columns widens the arrays; a memo's kept values then change shape, and rows
    that did not change must still be computed, not read as zeros."""
    ledger = Ledger(S, rows=4, width=2)
    for name in ("a", "b"):
        ledger.upsert_node(parse_node(gpu_node(name, gpus=2, memory_mib=1000), S))
    memo = RowMemo(lambda ledger, rows: ledger.free_units[rows] + 1)  # +1: a zero-filled row cannot pass
    rows = np.array([ledger.row_of("a"), ledger.row_of("b")])
    assert memo.refresh(ledger, rows)[rows].tolist() == [[101, 101], [101, 101]]
    ledger.upsert_node(parse_node(gpu_node("a", gpus=3, memory_mib=1000), S))  # widens; "b" is unchanged
    assert memo.refresh(ledger, rows)[rows].tolist() == [[101, 101, 101], [101, 101, 1]]


def test_a_row_memo_keeps_several_arrays_some_by_column_and_they_stay_right_when_the_ledger_widens():
    ledger = Ledger(S, rows=4, width=2)
    for name in ("a", "b"):
        ledger.upsert_node(parse_node(gpu_node(name, gpus=2, memory_mib=1000), S))
    memo = RowMemo(lambda ledger, rows: {"per_gpu": ledger.free_units[rows] + 1, "total": ledger.free_units_sum[rows]},
                   by_column=("per_gpu",))
    rows = np.array([ledger.row_of("a"), ledger.row_of("b")])
    kept = memo.refresh(ledger, rows)
    assert kept["per_gpu"].shape == (2, 4) and kept["per_gpu"][:, rows].T.tolist() == [[101, 101], [101, 101]]
    assert kept["per_gpu"][1].flags.c_contiguous  # one GPU position across the nodes: contiguous
    ledger.upsert_node(parse_node(gpu_node("a", gpus=3, memory_mib=1000), S))  # widens; "b" is unchanged
    kept = memo.refresh(ledger, rows)
    assert kept["per_gpu"][:, rows].T.tolist() == [[101, 101, 101], [101, 101, 1]]
    assert kept["total"][rows].tolist() == [300, 200]


def test_without_evaluates_hypothetically_and_restores_exactly():
    ledger = ledger_with(gpu_node("n", gpus=2, memory_mib=16000))
    ledger.reserve(share(uid="a", units=60))
    ledger.commit("a")
    ledger.reserve(share(uid="b", index=1, units=30))  # still reserved (a bind in flight)
    before = ledger.snapshot()
    with ledger.without(["a", "b", "not-there"]):
        assert free(ledger, "n", 0)[0] == 100 and free(ledger, "n", 1)[0] == 100
    assert ledger.snapshot() == before and ledger.is_reserved("b") and not ledger.is_reserved("a")


def test_adopting_our_own_reservation_marks_it_bound():
    ledger = ledger_with(gpu_node("n", gpus=1, memory_mib=16000))
    ledger.reserve(share())
    assert ledger.adopt(share()) is None
    assert not ledger.is_reserved("u1") and free(ledger, "n", 0)[0] == 60


def test_share_memory_follows_the_usable_memory_through_node_changes():
    # kept per share until a node is added, replaced or removed; each of those must be seen
    ledger = ledger_with(gpu_node("a", gpus=1, memory_mib=16000))  # usable 16000 - 500

    def share(node, units=50):
        return int(ledger.share_memory(units)[ledger.row_of(node), 0])

    assert share("a") == 50 * 15500 // 100
    ledger.upsert_node(parse_node(gpu_node("a", gpus=1, memory_mib=32000), S))  # replaced in place
    assert share("a") == 50 * 31500 // 100
    ledger.upsert_node(parse_node(gpu_node("b", gpus=1, memory_mib=8000), S))  # added
    assert share("b") == 50 * 7500 // 100
    row = ledger.row_of("a")
    ledger.remove_node("a")
    assert int(ledger.share_memory(50)[row, 0]) == 0  # removed: its row offers nothing
    ledger.upsert_node(parse_node(gpu_node("c", gpus=1, memory_mib=24000), S))  # may take a's row
    assert share("c") == 50 * 23500 // 100 and share("b") == 50 * 7500 // 100
