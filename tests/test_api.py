"""The extender over HTTP (aiohttp test client): every verb, both nodeCacheCapable modes, racing binds,
idempotency, bad input answered clearly with no state change, and restart."""

import asyncio

import orjson
import pytest

from extender.core.assignment import from_annotation
from extender.core.settings import ASSIGNMENT_ANNOTATION
from extender.api.static import StaticCluster
from tests.api_helpers import SlowCluster, bind_args, filter_args, gpu_node, gpu_pod, post, start

NODES = [gpu_node("a", gpus=2, memory_mib=16000), gpu_node("b", gpus=1, memory_mib=16000),
         gpu_node("t", gpus=1, memory_mib=16000, model="Tesla T4", pool="team")]


async def test_filter_with_node_names(aiohttp_client):
    client, ext, _ = await start(aiohttp_client, NODES)
    pod = gpu_pod("p", units=50, memory_mib=20000)
    result = await post(client, "filter", filter_args(pod, names=["a", "b", "t", "cpu-only"]))
    assert result["NodeNames"] == [] and result["Nodes"] is None and result["Error"] == ""
    assert result["FailedNodes"] == {}
    assert set(result["FailedAndUnresolvableNodes"]) == {"a", "b", "t", "cpu-only"}
    assert "GPUs too small (memory)" in result["FailedAndUnresolvableNodes"]["a"]
    assert result["FailedAndUnresolvableNodes"]["cpu-only"] == "fracgpu: node has no GPU inventory"
    fits = await post(client, "filter", filter_args(gpu_pod("q", units=50), names=["a", "b", "t"]))
    assert fits["NodeNames"] == ["a", "b"] and "pool" in fits["FailedAndUnresolvableNodes"]["t"]


async def test_filter_with_full_nodes(aiohttp_client):
    # nodeCacheCapable: false — whole Node objects come in, and the fitting ones go back; what they say of
    # their GPUs is not read: the inventory is the feed's
    fresh = gpu_node("fresh", gpus=1, memory_mib=8000)
    client, ext, _ = await start(aiohttp_client, [fresh, NODES[2]])
    unknown = gpu_node("unknown", gpus=8)
    result = await post(client, "filter", filter_args(gpu_pod("p", units=10), nodes=[fresh, NODES[2], unknown]))
    assert [n["metadata"]["name"] for n in result["Nodes"]["items"]] == ["fresh"]
    assert result["Nodes"]["items"][0] == fresh and result["NodeNames"] is None
    assert "t" in result["FailedAndUnresolvableNodes"]
    assert "no GPU inventory" in result["FailedAndUnresolvableNodes"]["unknown"]


async def test_prioritize_scores_by_policy_and_annotation(aiohttp_client):
    client, ext, source = await start(aiohttp_client, NODES[:2])
    first = gpu_pod("first", units=50)
    source.add_pod(first)
    assert (await post(client, "bind", bind_args(first, "b")))["Error"] == ""
    pod = gpu_pod("p", units=50)
    scores = await post(client, "prioritize", filter_args(pod, names=["a", "b"]))
    # binpack: b has 50 of 100 used: 10 * ((50 + 50) / 100 + (8000 + 8000) / 16000) / 2 = 10; a: 10 * (50/200 + 8000/32000) / 2 = 2.5 -> 2
    assert scores == [{"Host": "a", "Score": 2}, {"Host": "b", "Score": 10}]
    pod["metadata"]["annotations"]["fracgpu.io/policy"] = "spread"
    spread = await post(client, "prioritize", filter_args(pod, names=["a", "b"]))
    assert spread == [{"Host": "a", "Score": 8}, {"Host": "b", "Score": 0}]


async def test_bind_writes_the_assignment_and_is_idempotent(aiohttp_client):
    client, ext, source = await start(aiohttp_client, NODES)
    pod = gpu_pod("p", units=40, memory_mib=4000)
    source.add_pod(pod)
    await post(client, "filter", filter_args(pod, names=["a", "b"]))
    assert await post(client, "bind", bind_args(pod, "a")) == {"Error": ""}
    bound = source.pods[("default", "p")]
    assert bound["spec"]["nodeName"] == "a"
    assignment = from_annotation(bound["metadata"]["annotations"][ASSIGNMENT_ANNOTATION],
                                 pod_uid=pod["metadata"]["uid"], namespace="default", name="p")
    assert [(s.index, s.units, s.memory_mib) for s in assignment.containers[0].gpus] == [(0, 40, 4000)]
    before = ext.ledger.snapshot()
    assert await post(client, "bind", bind_args(pod, "a")) == {"Error": ""}  # a retried bind: success
    assert ext.ledger.snapshot() == before
    other = await post(client, "bind", bind_args(pod, "b"))
    assert "already holds GPUs on node a" in other["Error"] and ext.ledger.snapshot() == before


async def test_concurrent_binds_never_over_commit(aiohttp_client):
    nodes = [gpu_node("one", gpus=1, memory_mib=16000)]
    pods = [gpu_pod(f"p{i}", units=30, memory_mib=1000) for i in range(12)]
    client, ext, source = await start(aiohttp_client, nodes, pods, source_cls=SlowCluster)
    results = await asyncio.gather(*(client.post("/bind", json=bind_args(p, "one")) for p in pods))
    bodies = [await r.json() for r in results]
    assert all(r.status == 200 for r in results)
    ok = [b for b in bodies if b["Error"] == ""]
    assert len(ok) == 3  # 3 x 30 = 90 <= 100 < 4 x 30
    assert all("no longer fits node one" in b["Error"] for b in bodies if b["Error"])
    table = ext.ledger.gpu_table("one")[0]
    assert table["unitsUsed"] == 90 and len(table["pods"]) == 3
    assert sum(1 for p in source.pods.values() if p["spec"].get("nodeName") == "one") == 3


async def test_failed_bind_releases_its_reservation(aiohttp_client):
    pod = gpu_pod("doomed", units=60)
    client, ext, source = await start(aiohttp_client, NODES[1:2], [pod],
                                      source_cls=lambda n, p: SlowCluster(n, p, fail={"doomed"}))
    before = ext.ledger.snapshot()
    result = await post(client, "bind", bind_args(pod, "b"))
    assert "binding to b failed: API server unreachable" in result["Error"]
    assert ext.ledger.snapshot() == before and not ext.ledger.is_reserved(pod["metadata"]["uid"])


async def test_bind_of_unknown_pod_or_wrong_uid(aiohttp_client):
    client, ext, source = await start(aiohttp_client, NODES)
    ghost = gpu_pod("ghost", units=10)
    assert "pod default/ghost (uid-default-ghost) not found" in (await post(client, "bind", bind_args(ghost, "a")))["Error"]
    real = gpu_pod("real", units=10)
    source.add_pod(real)
    args = bind_args(real, "a") | {"PodUID": "other-uid"}
    assert "UID other-uid is not the pod's" in (await post(client, "bind", args))["Error"]


def _bad_requests():
    big_pod = gpu_pod("p", units=10)
    return [
        ("filter", b"{not json", 400, "body is not JSON"),
        ("filter", b"[1, 2]", 400, "body must be a JSON object"),
        ("filter", orjson.dumps({"Pod": big_pod, "NodeNames": "a"}), 400, "NodeNames"),
        ("filter", orjson.dumps({"Pod": big_pod}), 400, "names no candidate nodes"),
        ("filter", orjson.dumps({"NodeNames": ["a"]}), 400, "Pod is missing"),
        ("filter", orjson.dumps({"Pod": big_pod, "Nodes": {"items": [{"metadata": {}}]}}), 400,
         "Nodes.items[0].metadata.name is missing"),
        ("bind", orjson.dumps({"PodName": "p"}), 400, "ExtenderBindingArgs.PodNamespace: Field required"),
        ("bind", orjson.dumps({"PodName": 5, "PodNamespace": "d", "PodUID": "u", "Node": "a"}), 400, "PodName"),
        ("preempt", orjson.dumps({"Pod": big_pod, "NodeNameToMetaVictims": {"a": {"Pods": "x"}}}), 400, "Pods"),
        ("prioritize", b"", 400, "body is not JSON"),
    ]


@pytest.mark.parametrize("verb, body, status, message", _bad_requests(), ids=lambda v: str(v)[:30])
async def test_bad_input_is_answered_clearly_and_changes_nothing(aiohttp_client, verb, body, status, message):
    client, ext, _ = await start(aiohttp_client, NODES)
    before = ext.ledger.snapshot()
    response = await client.post(f"/{verb}", data=body, headers={"Content-Type": "application/json"})
    assert response.status == status
    error = (await response.json())["Error"]
    assert message in error and error.startswith(verb)
    assert ext.ledger.snapshot() == before


@pytest.mark.parametrize(
    "limits, message",
    [({"fracgpu.io/vgpu": "150"}, "must be a multiple of 100"),
     ({"fracgpu.io/vgpu": "-5"}, "must not be negative"),
     ({"fracgpu.io/vgpu": "half"}, "not a Kubernetes quantity")],
)
async def test_invalid_resource_values_reject_every_node_with_the_rule(aiohttp_client, limits, message):
    client, ext, _ = await start(aiohttp_client, NODES)
    pod = gpu_pod("bad", units=10)
    pod["spec"]["containers"][0]["resources"]["limits"] = limits
    result = await post(client, "filter", filter_args(pod, names=["a", "b"]))
    assert result["NodeNames"] == [] and result["FailedNodes"] == {}
    assert all(message in m and "spec.containers[0].resources" in m
               for m in result["FailedAndUnresolvableNodes"].values())
    scores = await post(client, "prioritize", filter_args(pod, names=["a", "b"]))
    assert scores == [{"Host": "a", "Score": 0}, {"Host": "b", "Score": 0}]


async def test_unknown_policy_annotation_is_a_clear_rejection(aiohttp_client):
    client, ext, _ = await start(aiohttp_client, NODES)
    pod = gpu_pod("p", units=10)
    pod["metadata"]["annotations"]["fracgpu.io/policy"] = "fastest"
    result = await post(client, "filter", filter_args(pod, names=["a"]))
    assert "unknown policy 'fastest'" in result["FailedAndUnresolvableNodes"]["a"]


async def test_pod_without_our_resources_passes_through(aiohttp_client):
    client, ext, source = await start(aiohttp_client, NODES)
    pod = gpu_pod("cpu")
    assert (await post(client, "filter", filter_args(pod, names=["a", "x"])))["NodeNames"] == ["a", "x"]
    source.add_pod(pod)
    assert "asks for no fracgpu.io/vgpu" in (await post(client, "bind", bind_args(pod, "a")))["Error"]


async def test_huge_bodies_are_refused(aiohttp_client):
    client, ext, _ = await start(aiohttp_client, NODES, max_body_mib=1)
    payload = filter_args(gpu_pod("p", units=10), names=[f"node-{i:07d}" for i in range(80_000)])
    response = await client.post("/filter", data=orjson.dumps(payload), headers={"Content-Type": "application/json"})
    assert response.status == 413 and "too large" in (await response.json())["Error"]


async def test_restart_rebuilds_the_same_ledger(aiohttp_client):
    client, ext, source = await start(aiohttp_client, NODES)
    for i, node in enumerate(["a", "a", "b", "a"]):
        pod = gpu_pod(f"p{i}", units=30 + 10 * i, memory_mib=1000)
        source.add_pod(pod)
        assert (await post(client, "bind", bind_args(pod, node)))["Error"] == ""
    restarted, ext2, _ = await start(aiohttp_client, list(source.nodes.values()), list(source.pods.values()))
    assert ext2.ledger.snapshot() == ext.ledger.snapshot()
    assert list(ext2.warnings) == []


async def test_preempt_keeps_only_the_victims_the_gpus_need(aiohttp_client):
    # node a: GPU 0 holds low (30 units, priority 1) and mid (30, priority 5); GPU 1 holds big (80, priority 1)
    low, mid, big = (gpu_pod("low", units=30), gpu_pod("mid", units=30), gpu_pod("big", units=80))
    for pod, priority in ((low, 1), (mid, 5), (big, 1)):
        pod["spec"]["priority"] = priority
    client, ext, source = await start(aiohttp_client, NODES[:2])
    for pod, gpu_node_name in ((low, "a"), (mid, "a"), (big, "a")):
        source.add_pod(pod)
        assert (await post(client, "bind", bind_args(pod, gpu_node_name)))["Error"] == ""
    cpu_victim = gpu_pod("cpu-hog")  # holds no GPU: the scheduler wants it gone for CPU; kept
    cpu_victim["metadata"]["uid"] = "cpu-hog-uid"
    uid = {p["metadata"]["name"]: p["metadata"]["uid"] for p in (low, mid, big)}
    preemptor = gpu_pod("vip", units=60)
    before = ext.ledger.snapshot()
    args = {"Pod": preemptor, "NodeNameToMetaVictims": {
        "a": {"Pods": [{"UID": uid["low"]}, {"UID": uid["mid"]}, {"UID": uid["big"]}, {"UID": "cpu-hog-uid"}],
              "NumPDBViolations": 0},
        "b": {"Pods": [{"UID": "cpu-hog-uid"}], "NumPDBViolations": 0},  # b: 60 units fit without evictions
    }}
    result = await post(client, "preempt", args)
    victims = {n: [p["UID"] for p in v["Pods"]] for n, v in result["NodeNameToMetaVictims"].items()}
    # binpack put low + mid on GPU 0 (60 used, 40 free) and big on GPU 1 (80 used, 20 free); vip needs 60.
    # Reprieve highest priority first, ties by UID: mid (5): evicting {low, big} leaves GPU 0 at 70 free -> fits,
    # mid stays; big: evicting {low} leaves GPU 0 at 70 free -> fits, big stays; low: evicting nobody leaves 40
    # and 20 free -> no. Needed on the GPUs: low alone. cpu-hog holds no GPU: the scheduler's, kept.
    assert victims["a"] == [uid["low"], "cpu-hog-uid"]
    assert victims["b"] == ["cpu-hog-uid"]  # GPUs need nobody gone: the scheduler's list stands
    assert ext.ledger.snapshot() == before  # preemption is a question, not an action
    # a node where even every proposed victim gone leaves no room is dropped
    hopeless = {"Pod": gpu_pod("huge", units=300), "NodeNameToMetaVictims": {"a": {"Pods": [{"UID": uid["low"]}]}}}
    assert (await post(client, "preempt", hopeless))["NodeNameToMetaVictims"] == {}


async def test_health_readiness_metrics_inspect(aiohttp_client):
    never = asyncio.Event()

    class NeverSynced(SlowCluster):
        async def run(self, sink):
            await never.wait()

    client, ext, _ = await start(aiohttp_client, NODES, source_cls=NeverSynced)
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 503
    client, ext, source = await start(aiohttp_client, NODES)
    assert (await client.get("/readyz")).status == 200
    pod = gpu_pod("p", units=25, memory_mib=2000)
    source.add_pod(pod)
    await post(client, "filter", filter_args(pod, names=["a", "b", "t"]))
    await post(client, "bind", bind_args(pod, "b"))
    metrics = await (await client.get("/metrics")).text()
    assert 'fracgpu_gpu_allocated_units{gpu="0",node="b"} 25.0' in metrics
    assert 'fracgpu_extender_rejections_total{reason="pool"} 1.0' in metrics
    assert 'fracgpu_extender_request_seconds_count{verb="filter"} 1.0' in metrics
    assert 'fracgpu_extender_decisions_total{outcome="bound",verb="bind"} 1.0' in metrics
    inspect = await (await client.get("/inspect?node=b")).json()
    assert inspect["nodes"]["b"][0]["pods"] == ["default/p"] and inspect["synced"]
    missing = await client.get("/inspect?node=nope")
    assert missing.status == 404 and "unknown node 'nope'" in (await missing.json())["Error"]


async def test_corrupt_node_annotation_excludes_the_node_with_a_reason(aiohttp_client):
    broken = gpu_node("broken", gpus=1)
    broken["metadata"]["annotations"]["fracgpu.io/gpus"] = "{oops"
    client, ext, _ = await start(aiohttp_client, [broken, NODES[1]])
    result = await post(client, "filter", filter_args(gpu_pod("p", units=10), names=["broken", "b"]))
    assert result["NodeNames"] == ["b"]
    assert "node excluded: node broken: annotation fracgpu.io/gpus: is not JSON" in \
        result["FailedAndUnresolvableNodes"]["broken"]
    assert any("is not JSON" in w for w in ext.warnings)


async def test_a_pod_is_parsed_once_per_body(aiohttp_client, monkeypatch):
    from extender.api import service

    parsed = []
    real = service.parse_pod
    monkeypatch.setattr(service, "parse_pod", lambda pod, core: parsed.append(1) or real(pod, core))
    client, ext, _ = await start(aiohttp_client, NODES)
    pod = gpu_pod("p", units=10)
    pod["metadata"]["resourceVersion"] = "41"
    await post(client, "filter", filter_args(pod, names=["a", "b"]))
    await post(client, "prioritize", filter_args(pod, names=["a", "b"]))
    assert len(parsed) == 1  # the same body: parsed by Filter, reused by Prioritize
    pod["spec"]["containers"][0]["resources"]["limits"]["fracgpu.io/vgpu"] = "150"  # another body, same version
    result = await post(client, "filter", filter_args(pod, names=["a"]))
    assert len(parsed) == 2 and "must be a multiple of 100" in result["FailedAndUnresolvableNodes"]["a"]


async def test_prioritize_reuses_its_cycles_filter_while_the_ledger_is_unchanged(aiohttp_client, monkeypatch):
    from extender.api import service

    evaluated = []
    real = service.evaluate
    monkeypatch.setattr(service, "evaluate", lambda *a: evaluated.append(a[1].name) or real(*a))
    client, ext, source = await start(aiohttp_client, NODES[:2])
    p, q = gpu_pod("p", units=50), gpu_pod("q", units=30)
    await post(client, "filter", filter_args(p, names=["a", "b"]))
    await post(client, "filter", filter_args(q, names=["a", "b"]))  # another cycle in between
    first = await post(client, "prioritize", filter_args(p, names=["a", "b"]))
    await post(client, "prioritize", filter_args(q, names=["b"]))  # a subset: the scheduler dropped one
    assert evaluated == ["p", "q"]
    holder = gpu_pod("holder", units=100)
    source.add_pod(holder)
    assert (await post(client, "bind", bind_args(holder, "b")))["Error"] == ""
    again = await post(client, "prioritize", filter_args(p, names=["a", "b"]))
    assert evaluated == ["p", "q", "p"]  # the ledger changed: evaluated afresh, and b is now full
    assert again != first and again[1] == {"Host": "b", "Score": 0}
    r, t = gpu_pod("r", units=10), gpu_pod("t", units=90)
    del r["metadata"]["uid"], t["metadata"]["uid"]  # no UID: nothing ties Prioritize to a Filter
    await post(client, "filter", filter_args(r, names=["a"]))
    assert (await post(client, "prioritize", filter_args(t, names=["a"]))) == [{"Host": "a", "Score": 4}]
    assert evaluated == ["p", "q", "p", "r", "t"]
    await post(client, "filter", filter_args(p, names=["a"]))
    p["metadata"]["resourceVersion"] = "7"  # p edited since that Filter: its new request is evaluated
    p["spec"]["containers"][0]["resources"]["limits"]["fracgpu.io/vgpu"] = "60"
    await post(client, "prioritize", filter_args(p, names=["a"]))
    assert evaluated == ["p", "q", "p", "r", "t", "p", "p"]


async def test_filter_catches_up_before_saying_a_pod_fits_nowhere(aiohttp_client):
    # The deletion that frees the GPU is "in flight": the source delivers it only when asked to catch up,
    # as a watch event the API server already sent would arrive. Filter must see it before rejecting.
    holder = gpu_pod("holder", units=80)

    class LaggingCluster(StaticCluster):
        calls = 0

        async def catch_up(self):
            LaggingCluster.calls += 1
            if self.sink is not None and LaggingCluster.calls == 1:
                self.sink.on_pod_deleted(holder)
            return True

        async def run(self, sink):
            self.sink = sink
            await super().run(sink)

    LaggingCluster.sink = None
    filler = gpu_pod("filler", units=60)
    client, extender, _ = await start(aiohttp_client, [gpu_node("a", gpus=1)], [holder, filler],
                                      source_cls=LaggingCluster)
    await post(client, "filter", filter_args(holder, names=["a"]))
    assert (await post(client, "bind", bind_args(holder, "a")))["Error"] == ""
    waiter = gpu_pod("waiter", units=50)
    body = await post(client, "filter", filter_args(waiter, names=["a"]))
    assert body["NodeNames"] == ["a"] and LaggingCluster.calls == 1
    # A pod that fits is answered without a call to the API server; one asking what no node has, too.
    await post(client, "filter", filter_args(gpu_pod("small", units=10), names=["a"]))
    body = await post(client, "filter", filter_args(gpu_pod("pair", units=100, gpu_count=2), names=["a"]))
    assert body["NodeNames"] == [] and "a" in body["FailedAndUnresolvableNodes"] and LaggingCluster.calls == 1
    # Really full: one catch-up, nothing new arrives, the rejection stands.
    await post(client, "filter", filter_args(filler, names=["a"]))
    assert (await post(client, "bind", bind_args(filler, "a")))["Error"] == ""
    body = await post(client, "filter", filter_args(gpu_pod("late", units=50), names=["a"]))
    assert body["NodeNames"] == [] and "units" in body["FailedNodes"]["a"] and LaggingCluster.calls == 2


async def test_a_stale_unbound_event_does_not_release_a_bind_in_flight(aiohttp_client):
    # The watch may deliver a pod's creation (unbound) while our bind of it is still in flight.
    gate = asyncio.Event()

    class GatedCluster(StaticCluster):
        async def bind(self, **kwargs):
            await gate.wait()
            await super().bind(**kwargs)

    first, second = gpu_pod("first", units=70), gpu_pod("second", units=70)
    client, extender, _ = await start(aiohttp_client, [gpu_node("a", gpus=1)], [first, second],
                                      source_cls=GatedCluster)
    await post(client, "filter", filter_args(first, names=["a"]))
    binding = asyncio.create_task(post(client, "bind", bind_args(first, "a")))
    for _ in range(100):
        if extender.ledger.is_reserved(first["metadata"]["uid"]):
            break
        await asyncio.sleep(0.01)
    extender.on_pod(first)  # the stale creation event
    body = await post(client, "filter", filter_args(second, names=["a"]))
    assert body["NodeNames"] == [] and "units" in body["FailedNodes"]["a"]
    gate.set()
    assert (await binding)["Error"] == ""
    assert extender.inspect()["nodes"]["a"][0]["unitsUsed"] == 70


async def test_fgd_learns_its_target_workload_from_the_pods_it_sees(aiohttp_client):
    from extender.core import evaluate, parse_pod
    from extender.core.policies import Fgd

    client, ext, source = await start(aiohttp_client, NODES[:2], policy="fgd", fgd_window=3)
    held = gpu_pod("held", units=30)
    source.add_pod(held)
    assert (await post(client, "bind", bind_args(held, "a")))["Error"] == ""
    for name, units in (("p1", 50), ("p2", 25)):
        await post(client, "filter", filter_args(gpu_pod(name, units=units), names=["a", "b"]))
    # window of 3 GPU pods: held (30), p1 (50), p2 (25); each a third
    assert sorted(ext._recent.shapes()) == [(0, 1, 25, None, 1 / 3), (0, 1, 30, None, 1 / 3),
                                                 (0, 1, 50, None, 1 / 3)]
    pod = gpu_pod("p3", units=25)
    await post(client, "filter", filter_args(pod, names=["a", "b"]))
    version = ext._recent.version
    scores = await post(client, "prioritize", filter_args(pod, names=["a", "b"]))
    assert ext._recent.version == version  # Prioritize of the same pod is not a new observation
    workload = ext._recent.shapes()  # p1, p2, p3: the oldest (held) has left the window
    assert sorted(workload) == [(0, 1, 25, None, 2 / 3), (0, 1, 50, None, 1 / 3)]
    expected = evaluate(ext.ledger, parse_pod(pod, ext.core), ["a", "b"], Fgd(workload))
    assert scores == [{"Host": n, "Score": round(s)} for n, s in zip(expected.fits, expected.scores.tolist())]


def test_fgd_window_must_be_positive():
    from extender.api.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="fgd_window"):
        load_settings(env={}, flags={"policy": "fgd", "fgd_window": 0})

async def test_the_extender_works_out_its_policys_per_node_state_before_it_reports_ready(aiohttp_client):
    nodes = [gpu_node(n, gpus=2) for n in ("a", "b", "c")]
    client, ext, _ = await start(aiohttp_client, nodes, policy="gpu-clustering")
    assert ext.synced
    memo = ext._policies["gpu-clustering"]._kinds.memo
    rows = ext.ledger.rows_of(ext.ledger.node_names())
    assert (memo._versions[rows] == ext.ledger.row_version[rows]).all()  # every node counted at sync
