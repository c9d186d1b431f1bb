"""random: a seeded hash of (seed, pod, node), no RNG state."""

from extender.core import evaluate, make_policy, parse_pod
from extender.core.loading import build_ledger
from extender.testing.factories import gpu_node, gpu_pod
from support import S


def test_random_is_seeded_and_reproducible():
    nodes = [gpu_node(f"n{i:02d}", gpus=4) for i in range(40)]
    ledger, _ = build_ledger(S, nodes, [])
    request = parse_pod(gpu_pod("p", units=10), S)
    names = ledger.node_names()

    def decisions(seed):
        evaluation = evaluate(ledger, request, names, make_policy("random", seed=seed))
        best = evaluation.best()
        return list(evaluation.scores), best, evaluation.placement(best)

    assert decisions(1) == decisions(1)
    assert decisions(1)[0] != decisions(2)[0]
    assert all(0.0 <= s <= 10.0 for s in decisions(3)[0])
    # not constant: over 40 nodes the scores spread across the range
    assert max(decisions(1)[0]) - min(decisions(1)[0]) > 5


def test_the_draw_depends_on_the_pod_not_on_the_call():
    ledger, _ = build_ledger(S, [gpu_node(f"n{i}", gpus=2) for i in range(8)], [])
    policy = make_policy("random", seed=4)
    first = parse_pod(gpu_pod("a", units=10, uid="u-a"), S)
    again = evaluate(ledger, first, ledger.node_names(), policy).scores.tolist()
    assert evaluate(ledger, first, ledger.node_names(), policy).scores.tolist() == again
    other = parse_pod(gpu_pod("b", units=10, uid="u-b"), S)
    assert evaluate(ledger, other, ledger.node_names(), policy).scores.tolist() != again
