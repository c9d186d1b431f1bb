"""Live mode's list/watch loop and binder, driven by a scripted stand-in for the API server's HTTP answers.

This checks our loop logic (410 relist, deletions seen on relist, backoff, the Binding we post); the real
API server is exercised by the end-to-end tests.
"""

import asyncio
import threading
import time

import orjson
import pytest
from aiohttp import web
from kubernetes.client.rest import ApiException

from extender.api.service import Extender
from extender.api.settings import load_settings
from extender.api.source import BindError
from extender.core.assignment import Assignment, ContainerAssignment, GpuShare, to_annotation
from extender.core.settings import ASSIGNMENT_ANNOTATION
from extender.kube.live import LiveCluster
from extender.kube.rest import RestClient
from extender.testing.factories import gpu_node, gpu_pod


class Response:
    def __init__(self, payload=None, lines=(), status=200, hold=0.0):
        self.data = orjson.dumps(payload) if payload is not None else b""
        self.lines = [orjson.dumps(line) + b"\n" for line in lines]
        self.status = status
        self.hold = hold
        self.closed = threading.Event()

    def stream(self, amt=None, decode_content=True):
        for line in self.lines:
            yield line[:5]  # split across chunks, as a network would
            yield line[5:]
        self.closed.wait(self.hold)

    def close(self):
        self.closed.set()


class FakeApi:
    """Answers list and watch calls from scripts; after a script ends, watches idle briefly and end."""

    def __init__(self, lists, watches):
        self.lists = {k: list(v) for k, v in lists.items()}
        self.watches = {k: list(v) for k, v in watches.items()}
        self.calls = []

    def _answer(self, kind, watch=False, **kwargs):
        self.calls.append((kind, watch, kwargs.get("resource_version")))
        script = self.watches[kind] if watch else self.lists[kind]
        item = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(item, Exception):
            raise item
        return item

    def list_node(self, **kwargs):
        return self._answer("nodes", **kwargs)

    def list_pod_for_all_namespaces(self, **kwargs):
        return self._answer("pods", **kwargs)

def listing(items, version):
    return Response({"metadata": {"resourceVersion": version}, "items": items})


def bound(pod, node, units):
    uid = pod["metadata"]["uid"]
    assignment = Assignment(pod_uid=uid, namespace="default", name=pod["metadata"]["name"], node=node, pool=None,
                            policy="binpack", containers=(ContainerAssignment(
                                name="main", kind="app", gpus=(GpuShare(0, f"GPU-{node}-0", units, 1000),)),))
    pod["spec"]["nodeName"] = node
    pod["metadata"]["annotations"][ASSIGNMENT_ANNOTATION] = to_annotation(assignment)
    return pod


async def wait_for(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_list_watch_relist_on_410_sees_deletions_during_the_gap():
    node = gpu_node("n1", gpus=1, memory_mib=16000)
    p1, p2, p3 = (bound(gpu_pod(n, units=u), "n1", u) for n, u in (("p1", 10), ("p2", 20), ("p3", 30)))
    api = FakeApi(
        lists={"nodes": [listing([node], "5")],
               "pods": [listing([p1], "7"), listing([p2, p3], "20")]},  # p1 vanished during the gap
        watches={"nodes": [Response(lines=[], hold=0.05)],
                 "pods": [Response(lines=[{"type": "ADDED", "object": p2},
                                          {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
                                          {"type": "ERROR", "object": {"kind": "Status", "code": 410}}]),
                          Response(lines=[], hold=0.05)]},
    )
    extender = Extender(load_settings(env={}), LiveCluster(api, RestClient('http://127.0.0.1:1'), backoff=(0.01, 0.02)))
    task = asyncio.create_task(extender.source.run(extender))
    try:
        await wait_for(lambda: extender.synced and api.calls.count(("pods", False, None)) >= 2
                       and extender.ledger.gpu_table("n1")[0]["unitsUsed"] == 50)
        table = extender.ledger.gpu_table("n1")[0]
        assert table["pods"] == ["default/p2", "default/p3"]  # p1 released by the relist
        assert ("pods", True, "7") in api.calls  # the first watch continued from the list's version
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_errors_back_off_and_relist():
    node = gpu_node("n1", gpus=1)
    delays = []

    async def sleep(seconds):
        delays.append(seconds)

    api = FakeApi(
        lists={"nodes": [ApiException(status=500, reason="boom"), ApiException(status=503, reason="away"),
                         listing([node], "1")],
               "pods": [listing([], "1")]},
        watches={"nodes": [Response(lines=[], hold=0.05)], "pods": [Response(lines=[], hold=0.05)]},
    )
    extender = Extender(load_settings(env={}), LiveCluster(api, RestClient('http://127.0.0.1:1'), backoff=(0.5, 30.0), sleep=sleep))
    task = asyncio.create_task(extender.source.run(extender))
    try:
        await wait_for(lambda: extender.synced)
        assert delays[:2] == [0.5, 1.0] and extender.ledger.node_names() == ["n1"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_bind_posts_a_uid_guarded_binding_with_the_annotation(aiohttp_server):
    posted = []

    async def binding(request):
        posted.append((request.match_info["ns"], request.match_info["pod"], request.headers.get("Authorization"),
                       await request.json()))
        if request.match_info["pod"] == "taken":
            return web.json_response({"kind": "Status", "reason": "Conflict",
                                      "message": "pod taken is already assigned to node n0"}, status=409)
        return web.json_response({"kind": "Status", "status": "Success"}, status=201)

    app = web.Application()
    app.router.add_post("/api/v1/namespaces/{ns}/pods/{pod}/binding", binding)
    server = await aiohttp_server(app)
    api = FakeApi(lists={"nodes": [listing([], "1")], "pods": [listing([], "1")]}, watches={})
    live = LiveCluster(api, RestClient(str(server.make_url("")), authorization=lambda: "Bearer t0ken"))
    await live.bind(namespace="ns", name="p", uid="u-1", node="n1", annotations={ASSIGNMENT_ANNOTATION: "{}"})
    namespace, pod, auth, body = posted[0]
    assert (namespace, pod, auth) == ("ns", "p", "Bearer t0ken")
    assert body == {"apiVersion": "v1", "kind": "Binding",
                    "metadata": {"name": "p", "namespace": "ns", "uid": "u-1",
                                 "annotations": {ASSIGNMENT_ANNOTATION: "{}"}},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}}
    with pytest.raises(BindError) as error:
        await live.bind(namespace="ns", name="taken", uid="u-2", node="n1", annotations={})
    assert error.value.conflict and str(error.value) == "409 Conflict: pod taken is already assigned to node n0"
    await live.close()

def _poisoned_feed():
    """A cluster feed where some objects are bad: each must be excluded with its reason, the rest placed."""
    import json

    good_node = gpu_node("good", gpus=2, memory_mib=16000)
    huge = gpu_node("huge", gpus=1)
    record = json.loads(huge["metadata"]["annotations"]["fracgpu.io/gpus"])
    record["gpus"][0]["memoryMiB"] = 10**30
    huge["metadata"]["annotations"]["fracgpu.io/gpus"] = json.dumps(record)
    gfd = {"metadata": {"name": "gfd", "labels": {"nvidia.com/gpu.count": "²", "nvidia.com/gpu.memory": "16384"}}}
    shapeless = {"metadata": "not an object"}
    good_pod = bound(gpu_pod("good-pod", units=20), "good", 20)
    big = bound(gpu_pod("big-int", units=10), "good", 10)
    assignment = json.loads(big["metadata"]["annotations"][ASSIGNMENT_ANNOTATION])
    assignment["containers"][0]["gpus"][0]["units"] = 2**63
    big["metadata"]["annotations"][ASSIGNMENT_ANNOTATION] = json.dumps(assignment)
    corrupt = bound(gpu_pod("corrupt", units=10), "good", 10)
    corrupt["metadata"]["annotations"][ASSIGNMENT_ANNOTATION] = "{not json"
    odd_uid = gpu_pod("odd-uid", units=10)
    odd_uid["metadata"]["uid"] = ["a", "list"]
    late = bound(gpu_pod("late", units=30), "good", 30)
    late_bad = bound(gpu_pod("late-bad", units=10), "good", 10)
    late_bad["metadata"]["annotations"][ASSIGNMENT_ANNOTATION] = json.dumps(assignment | {"podUID": "uid-x"})
    return (
        [good_node, huge, gfd, shapeless],
        [good_pod, big, corrupt, odd_uid],
        [{"type": "ADDED", "object": late}, {"type": "ADDED", "object": late_bad},
         {"type": "MODIFIED", "object": {"metadata": 5}}, {"type": "ADDED", "object": "a string"}],
    )


@pytest.mark.parametrize("start", ["first", "restart"])
async def test_poisoned_objects_are_excluded_and_the_rest_of_the_feed_is_placed(start):
    nodes, pods, events = _poisoned_feed()
    api = FakeApi(lists={"nodes": [listing(nodes, "5")], "pods": [listing(pods, "7")]},
                  watches={"nodes": [Response(lines=[], hold=0.05)],
                           "pods": [Response(lines=events if start == "first" else [], hold=0.05)]})
    if start == "restart":  # the late pods are already in the list a restarted extender reads
        api.lists["pods"] = [listing(pods + [e["object"] for e in events], "9")]
    extender = Extender(load_settings(env={}), LiveCluster(api, RestClient("http://127.0.0.1:1"), backoff=(0.01, 0.02)))
    task = asyncio.create_task(extender.source.run(extender))
    try:
        await wait_for(lambda: extender.synced and extender.ledger.gpu_table("good")[0]["unitsUsed"] == 50)
        assert extender.ledger.node_names() == ["good"]
        assert {"huge", "gfd"} <= set(extender.ledger.problems())
        assert "memoryMiB" in extender.ledger.problems()["huge"] and "gpu.count" in extender.ledger.problems()["gfd"]
        table = extender.ledger.gpu_table("good")[0]
        assert table["pods"] == ["default/good-pod", "default/late"]
        warnings = "\n".join(extender.warnings)
        for name in ("big-int", "corrupt", "late-bad"):
            assert f"default/{name}" in warnings
        pod = gpu_pod("new", units=50)
        evaluation_args = {"Pod": pod, "NodeNames": ["good", "huge", "gfd"]}
        from extender.api.wire import ExtenderArgs
        result = extender.filter(ExtenderArgs.model_validate(evaluation_args))
        assert result.node_names == ["good"] and set(result.failed_and_unresolvable_nodes) == {"huge", "gfd"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
