"""Hostile and careless input: one bad object excludes that object, never the feed; bad requests get a 400 that
names the field, never a 500; nothing a request carries changes the ledger when it is refused."""

import asyncio
import contextlib
import gzip
import json
import logging
import time

import pytest

from api_helpers import bind_args, filter_args, gpu_node, gpu_pod, post, start
from extender.core import CoreSettings, parse_pod
from extender.core.assignment import Assignment, ContainerAssignment, GpuShare, to_annotation
from extender.core.errors import InvalidRequest
from extender.core.limits import (MAX_CANDIDATES, MAX_GPU_CONTAINERS_PER_POD, MAX_GPU_MEMORY_MIB, MAX_GPUS_PER_NODE,
                                  MAX_VICTIMS)
from extender.core.settings import ASSIGNMENT_ANNOTATION, GPUS_ANNOTATION

NODES = [gpu_node("a", gpus=2, memory_mib=16384), gpu_node("b", gpus=2, memory_mib=16384)]
INT64_OVERFLOW = 2**63


def bound(name, node, *, units=10, memory=1000, index=0, asks=10):
    pod = gpu_pod(name, units=asks)
    uid = pod["metadata"]["uid"]
    assignment = Assignment(pod_uid=uid, namespace="default", name=name, node=node, pool=None, policy="binpack",
                            containers=(ContainerAssignment(name="main", kind="app",
                                                            gpus=(GpuShare(0, f"GPU-{node}-0", 10, 1000),)),))
    record = json.loads(to_annotation(assignment))
    record["containers"][0]["gpus"][0].update(units=units, memoryMiB=memory, index=index)
    pod["spec"]["nodeName"] = node
    pod["metadata"]["annotations"][ASSIGNMENT_ANNOTATION] = json.dumps(record)
    return pod


def with_gpus(node, **fields):
    record = json.loads(node["metadata"]["annotations"][GPUS_ANNOTATION])
    record["gpus"][0].update(fields)
    node["metadata"]["annotations"][GPUS_ANNOTATION] = json.dumps(record)
    return node


def gfd_node(name, count, memory="16384"):
    return {"metadata": {"name": name, "labels": {"nvidia.com/gpu.count": count, "nvidia.com/gpu.memory": memory,
                                                  "nvidia.com/gpu.product": "Tesla-T4"}, "annotations": {}},
            "status": {"capacity": {}, "allocatable": {}}}


# ---------------------------------------------------------------------------------------------- the cluster feed
@pytest.mark.parametrize("units, memory", [(INT64_OVERFLOW, 1000), (10, 10**30), (10, -1), (10**7, 1000)])
async def test_a_huge_integer_in_one_assignment_excludes_that_pod_only(aiohttp_client, units, memory):
    good = bound("good", "a")
    client, ext, _ = await start(aiohttp_client, NODES, [bound("bad", "a", units=units, memory=memory), good])
    assert (await client.get("/readyz")).status == 200
    inspect = await client.get("/inspect")
    assert inspect.status == 200
    gpu = (await inspect.json())["nodes"]["a"][0]
    assert gpu["pods"] == ["default/good"] and gpu["unitsUsed"] == 10
    assert any("default/bad" in w and "annotation fracgpu.io/assignment" in w for w in ext.warnings)
    result = await post(client, "filter", filter_args(gpu_pod("p", units=90), names=["a"]))
    assert result["NodeNames"] == ["a"]  # the bad pod holds nothing; the good one 10 of GPU 0's 100


@pytest.mark.parametrize("fields, names", [({"memoryMiB": 10**30}, "memoryMiB"),
                                           ({"memoryMiB": INT64_OVERFLOW}, "memoryMiB"),
                                           ({"usedMemoryMiB": 10**30}, "usedMemoryMiB"),
                                           ({"index": INT64_OVERFLOW}, "index"),
                                           ({"numaNode": 10**30}, "numaNode")])
async def test_a_huge_integer_in_one_inventory_excludes_that_node_only(aiohttp_client, fields, names):
    client, ext, _ = await start(aiohttp_client, [with_gpus(gpu_node("x", gpus=2), **fields), NODES[1]])
    assert (await client.get("/readyz")).status == 200
    assert (await client.get("/inspect")).status == 200
    result = await post(client, "filter", filter_args(gpu_pod("p", units=10), names=["x", "b"]))
    assert result["NodeNames"] == ["b"]
    assert names in result["FailedAndUnresolvableNodes"]["x"]


@pytest.mark.parametrize("count, message", [("²", "positive whole number"), ("٣", "positive whole number"),
                                            ("5000000", f"at most {MAX_GPUS_PER_NODE} GPUs"),
                                            ("0", "positive whole number")])
async def test_a_bad_gpu_count_label_excludes_that_node_only(aiohttp_client, count, message):
    client, ext, _ = await start(aiohttp_client, [gfd_node("g", count), NODES[1]])
    assert (await client.get("/readyz")).status == 200
    result = await post(client, "filter", filter_args(gpu_pod("p", units=10), names=["g", "b"]))
    assert result["NodeNames"] == ["b"] and message in result["FailedAndUnresolvableNodes"]["g"]


async def test_a_gfd_memory_label_beyond_a_gpu_excludes_the_node(aiohttp_client):
    client, ext, _ = await start(aiohttp_client, [gfd_node("g", "2", memory=str(10**30)), NODES[1]])
    result = await post(client, "filter", filter_args(gpu_pod("p", units=10), names=["g", "b"]))
    assert f"at most {MAX_GPU_MEMORY_MIB}" in result["FailedAndUnresolvableNodes"]["g"]


async def test_an_inventory_of_too_many_gpus_excludes_the_node(aiohttp_client):
    node = gpu_node("many", gpus=1)
    record = json.loads(node["metadata"]["annotations"][GPUS_ANNOTATION])
    record["gpus"] = [dict(record["gpus"][0], index=i, uuid=f"GPU-{i}") for i in range(MAX_GPUS_PER_NODE + 1)]
    node["metadata"]["annotations"][GPUS_ANNOTATION] = json.dumps(record)
    client, ext, _ = await start(aiohttp_client, [node, NODES[1]])
    result = await post(client, "filter", filter_args(gpu_pod("p", units=10), names=["many", "b"]))
    assert result["NodeNames"] == ["b"] and "gpus" in result["FailedAndUnresolvableNodes"]["many"]


# ------------------------------------------------------------------------------------------------ the requests
@pytest.mark.parametrize("value", ["1e1000000", "1e20", 1e308, INT64_OVERFLOW, "9223372036854775808",
                                   "99999999999999999999Ei"])
def test_a_resource_value_beyond_int64_is_an_invalid_request(value):
    pod = gpu_pod("p", units=10)
    pod["spec"]["containers"][0]["resources"]["limits"]["fracgpu.io/vgpu"] = value
    with pytest.raises(InvalidRequest, match=r"limits\[fracgpu.io/vgpu\]"):
        parse_pod(pod, CoreSettings())


@pytest.mark.parametrize("count", ["²", "1e3", "-1"])
def test_a_bad_gpu_count_annotation_is_an_invalid_request(count):
    pod = gpu_pod("p", units=10, gpu_count=1)
    pod["metadata"]["annotations"]["fracgpu.io/gpu-count"] = count
    with pytest.raises(InvalidRequest, match=r"fracgpu.io/gpu-count\]: must be a positive whole number"):
        parse_pod(pod, CoreSettings())


@pytest.mark.parametrize("count", [MAX_GPUS_PER_NODE + 1, INT64_OVERFLOW])
def test_a_gpu_count_annotation_beyond_the_limit_is_an_invalid_request(count):
    pod = gpu_pod("p", units=100 * (MAX_GPUS_PER_NODE + 1), gpu_count=count)  # 65 whole GPUs: valid but for the cap
    with pytest.raises(InvalidRequest, match=rf"fracgpu.io/gpu-count\]: must be at most {MAX_GPUS_PER_NODE} GPUs"):
        parse_pod(pod, CoreSettings())
    pod = gpu_pod("p", units=100 * MAX_GPUS_PER_NODE, gpu_count=MAX_GPUS_PER_NODE)
    assert parse_pod(pod, CoreSettings()).containers[0].count == MAX_GPUS_PER_NODE


def _hostile_requests():
    pod = gpu_pod("p", units=10)
    uid_list = gpu_pod("q", units=10)
    uid_list["metadata"]["uid"] = ["x"]
    uid_object = gpu_pod("r", units=10)
    uid_object["metadata"]["uid"] = {"a": 1}
    cpu_only = {"metadata": {"name": "c", "namespace": "default", "uid": "uid-c"},
                "spec": {"containers": [{"name": "main", "resources": {"limits": {"cpu": "1"}}}]}}
    victim = {"Pods": [{"metadata": {"name": "v", "namespace": "default", "uid": "uid-v"}}], "NumPDBViolations": 0}
    return [
        ("filter", {"Pod": uid_list, "NodeNames": ["a"]}, "metadata.uid"),
        ("filter", {"Pod": uid_object, "NodeNames": ["a"]}, "metadata.uid"),
        ("filter", {"Pod": pod, "Nodes": {"items": [{"metadata": "x"}]}}, "Nodes.items[0].metadata"),
        ("prioritize", {"Pod": pod, "Nodes": {"items": ["x"]}}, "Nodes.items[0]"),
        ("preempt", {"Pod": cpu_only, "NodeNameToVictims": {"a": victim}}, None),
        ("preempt", {"Pod": pod, "NodeNameToVictims": {"a": {"Pods": [{"metadata": "x"}]}}}, "metadata"),
        ("preempt", {"Pod": pod, "NodeNameToVictims": {"a": {"Pods": [{"metadata": {"uid": True}}]}}}, "uid"),
        ("preempt", {"Pod": pod, "NodeNameToMetaVictims": {"a": {"Pods": [{"UID": True}]}}}, "UID"),
        ("preempt", {"Pod": pod, "NodeNameToMetaVictims": {"a": {"Pods": [], "NumPDBViolations": INT64_OVERFLOW}}},
         "NumPDBViolations"),
    ]


@pytest.mark.parametrize("verb, body, names", _hostile_requests(), ids=lambda v: str(v)[:40])
async def test_hostile_requests_get_200_or_a_400_naming_the_field(aiohttp_client, verb, body, names):
    client, ext, _ = await start(aiohttp_client, NODES)
    before = ext.ledger.snapshot()
    response = await client.post(f"/{verb}", data=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status in (200, 400), await response.text()
    answer = await response.json()
    if response.status == 400 or names is not None:
        assert response.status == 400 and names in answer["Error"], answer
    assert ext.ledger.snapshot() == before


@pytest.mark.parametrize("form", ["NodeNameToVictims", "NodeNameToMetaVictims"])
@pytest.mark.parametrize("containers", [[{"name": "main", "resources": {"limits": {"cpu": "1"}}}],
                                        [{"name": "main", "resources": {"limits": {"fracgpu.io/vgpu": "0"}}}], []],
                         ids=["cpu-only", "vgpu-0", "no-containers"])
async def test_preempt_for_a_pod_asking_no_gpu_units_keeps_the_victims_it_does_not_judge(aiohttp_client, form,
                                                                                            containers):
    client, ext, _ = await start(aiohttp_client, NODES, [bound("holder", "a", units=100, memory=16000, asks=100)])
    before = ext.ledger.snapshot()
    pod = {"metadata": {"name": "c", "namespace": "default", "uid": "uid-c"}, "spec": {"containers": containers}}
    uids = ["uid-default-holder", "uid-v"]  # the first holds GPU 0 of node a, the second no GPU
    if form == "NodeNameToVictims":
        pods = [{"metadata": {"name": u, "namespace": "default", "uid": u}} for u in uids]
    else:
        pods = [{"UID": u} for u in uids]
    answer = await post(client, "preempt", {"Pod": pod, form: {"a": {"Pods": pods, "NumPDBViolations": 1}}})
    victims = answer["NodeNameToMetaVictims"]["a"]
    kept = [p["UID"] for p in victims["Pods"]]
    assert "uid-v" in kept and kept == [u for u in uids if u in kept]  # a subset, in the scheduler's order
    assert victims["NumPDBViolations"] == 1 and ext.ledger.snapshot() == before


async def test_a_gzip_header_on_a_plain_body_is_a_400(aiohttp_client):
    client, ext, _ = await start(aiohttp_client, NODES)
    body = json.dumps(filter_args(gpu_pod("p", units=10), names=["a"])).encode()
    response = await client.post("/filter", data=body, headers={"Content-Type": "application/json",
                                                                "Content-Encoding": "gzip"})
    assert response.status == 400 and "Content-Encoding" in (await response.json())["Error"]
    response = await client.post("/filter", data=gzip.compress(body),
                                 headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert response.status == 200 and (await response.json())["NodeNames"] == ["a"]
    bomb = gzip.compress(b" " * (2 * 1024 * 1024))  # 2 MiB of spaces in about 2 KiB, over a 1 MiB limit
    client, ext, _ = await start(aiohttp_client, NODES, max_body_mib=1)
    response = await client.post("/filter", data=bomb, headers={"Content-Type": "application/json",
                                                                "Content-Encoding": "gzip"})
    assert response.status == 413 and "too large" in (await response.json())["Error"]


async def test_bind_of_a_pod_with_a_huge_integer_is_refused_and_holds_nothing(aiohttp_client):
    client, ext, source = await start(aiohttp_client, NODES)
    pod = gpu_pod("p", units=10)
    pod["spec"]["containers"][0]["resources"]["limits"]["fracgpu.io/vgpu-memory"] = str(INT64_OVERFLOW)
    source.add_pod(pod)
    before = ext.ledger.snapshot()
    answer = await post(client, "bind", bind_args(pod, "a"))
    assert "vgpu-memory" in answer["Error"] and ext.ledger.snapshot() == before


async def test_a_forged_filter_body_with_the_pods_uid_and_version_does_not_set_what_bind_charges(aiohttp_client):
    client, ext, source = await start(aiohttp_client, NODES)
    real = gpu_pod("p", units=100, memory_mib=8000)
    real["metadata"]["resourceVersion"] = "7"
    forged = json.loads(json.dumps(real))
    forged["spec"]["containers"][0]["resources"]["limits"] = {"fracgpu.io/vgpu": "1", "fracgpu.io/vgpu-memory": "1"}
    source.add_pod(real)
    await post(client, "filter", filter_args(forged, names=["a"]))
    result = await post(client, "filter", filter_args(real, names=["a"]))  # same UID and version, real body
    assert result["NodeNames"] == ["a"]
    assert (await post(client, "bind", bind_args(real, "a"))) == {"Error": ""}
    charged = sorted(g["unitsUsed"] for g in ext.ledger.gpu_table("a"))
    assert charged == [0, 100]  # the real pod's 100 units, not the forged 1
    other = gpu_pod("o", units=100)  # and the other GPU is all that is left
    assert (await post(client, "filter", filter_args(other, names=["a"])))["NodeNames"] == ["a"]
    third = gpu_pod("t", units=200)
    assert (await post(client, "filter", filter_args(third, names=["a"])))["NodeNames"] == []


async def test_bind_straight_after_a_forged_filter_charges_the_pod_as_the_cluster_holds_it(aiohttp_client):
    client, ext, source = await start(aiohttp_client, NODES)
    real = gpu_pod("p", units=100, memory_mib=8000)
    real["metadata"]["resourceVersion"] = "7"
    forged = json.loads(json.dumps(real))  # the same UID and version, asking for 1 unit
    forged["spec"]["containers"][0]["resources"]["limits"] = {"fracgpu.io/vgpu": "1", "fracgpu.io/vgpu-memory": "1"}
    source.add_pod(real)
    assert (await post(client, "filter", filter_args(forged, names=["a"])))["NodeNames"] == ["a"]
    assert (await post(client, "bind", bind_args(real, "a"))) == {"Error": ""}  # no Filter of the real body between
    assert sorted(g["unitsUsed"] for g in ext.ledger.gpu_table("a")) == [0, 100]  # the real 100 units, not 1
    assert ext.ledger.assignment(real["metadata"]["uid"]).containers[0].gpus[0].memory_mib == 8000


def _retained_bytes(root) -> int:
    """Bytes of the objects reachable from ``root``, classes, modules and functions (shared code) aside."""
    import gc
    import sys
    import types

    seen, stack, total = set(), [root], 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType)):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


async def test_the_parse_cache_keeps_what_bind_needs_not_the_pod_body(aiohttp_client):
    client, ext, _ = await start(aiohttp_client, NODES)
    small, big = gpu_pod("small", units=10), gpu_pod("big", units=10)
    big["metadata"]["annotations"]["note"] = "x" * 2**20  # a 1 MiB body
    for pod in (small, big):
        await post(client, "filter", filter_args(pod, names=["a"]))
    sizes = {name: _retained_bytes(ext._seen[f"uid-default-{name}"]) for name in ("small", "big")}
    assert max(sizes.values()) < 4096, sizes  # about 900 bytes each, whatever the body's size


async def test_the_parse_cache_holds_at_most_its_limit_dropping_the_oldest(aiohttp_client):
    from extender.api.service import _Seen
    from extender.core.limits import MAX_PARSED_PODS

    client, ext, _ = await start(aiohttp_client, NODES)
    earlier = _Seen(digest=None, request=None, error="an earlier pod", at=ext.clock())
    ext._seen.update((f"uid-{i}", earlier) for i in range(MAX_PARSED_PODS))
    await post(client, "filter", filter_args(gpu_pod("p", units=10), names=["a"]))
    size = len(ext._seen)
    assert size == MAX_PARSED_PODS
    assert "uid-0" not in ext._seen and "uid-1" in ext._seen and "uid-default-p" in ext._seen


async def test_the_parse_cache_forgets_a_pod_after_pod_cache_seconds(aiohttp_client):
    client, ext, _ = await start(aiohttp_client, NODES, pod_cache_seconds=60)
    now = [1000.0]
    ext.clock = lambda: now[0]
    for name, at in (("early", 1000.0), ("middle", 1059.0), ("late", 1061.0)):
        now[0] = at
        await post(client, "filter", filter_args(gpu_pod(name, units=10), names=["a"]))
    assert list(ext._seen) == ["uid-default-middle", "uid-default-late"]  # "early" is 61 s old
    answer = await post(client, "bind", bind_args(gpu_pod("early", units=10), "a"))  # in no cluster file either
    assert answer["Error"] == "pod default/early (uid-default-early) not found"


@pytest.mark.parametrize("verb", ["filter", "prioritize"])
async def test_node_objects_in_a_request_never_write_the_ledger(aiohttp_client, verb):
    client, ext, _ = await start(aiohttp_client, NODES)
    before = ext.ledger.snapshot()
    bare = {"metadata": {"name": "a", "annotations": {}}}  # node a with no inventory at all
    huge = gpu_node("b", gpus=8, memory_mib=2**20)  # node b claiming 8 x 1 TiB
    strangers = [gpu_node(f"injected-{i}", gpus=1) for i in range(200)]
    answer = await post(client, verb, filter_args(gpu_pod("p", units=10), nodes=[bare, huge, *strangers]))
    assert ext.ledger.snapshot() == before and ext.ledger.node_names() == ["a", "b"]
    if verb == "filter":
        assert [n["metadata"]["name"] for n in answer["Nodes"]["items"]] == ["a", "b"]
        assert len(answer["FailedAndUnresolvableNodes"]) == 200
    metrics = await (await client.get("/metrics")).text()
    assert "injected-" not in metrics


# ------------------------------------------------------------------------- requests that would block the loop
# Each is refused by a limit or answered quickly; the CPU-time bounds are hang guards (these took 2-7 s), far above
# what the answers take (milliseconds), not speed targets.
def test_a_pod_with_more_gpu_containers_than_the_limit_is_an_invalid_request():
    many = [{"name": f"c{i}", "resources": {"limits": {"fracgpu.io/vgpu": "1"}}} for i in range(999)]
    pod = gpu_pod("p", units=1, extra_containers=many)
    with pytest.raises(InvalidRequest, match=f"1000 containers ask for fracgpu.io/vgpu; at most "
                                             f"{MAX_GPU_CONTAINERS_PER_POD}"):
        parse_pod(pod, CoreSettings())
    pod = gpu_pod("p", units=1, extra_containers=many[:MAX_GPU_CONTAINERS_PER_POD - 1])
    assert len(parse_pod(pod, CoreSettings()).containers) == MAX_GPU_CONTAINERS_PER_POD


class SearchWork:
    """The multi-container search's work, counted from outside it: per search, how many GPU sets each listing ranked
    by connectivity (one topology evaluation a set) and how many sets it tried (charged to their GPUs)."""

    def __init__(self, monkeypatch):
        from extender.core import paths, search

        self.searches: list[dict] = []
        real_search, real_sets, real_connectivity, real_charge = (paths.search, search._gpu_sets,
                                                                  search.connectivity, search._charge)

        def counted_search(*args):
            self.searches.append({"listings": [], "tried": 0})
            return real_search(*args)

        def counted_sets(*args):
            self.searches[-1]["listings"].append(0)
            return real_sets(*args)  # a listing that is sorted is sorted here, before the first set is taken

        def counted_connectivity(*args):
            self.searches[-1]["listings"][-1] += 1
            return real_connectivity(*args)

        def counted_charge(container, subset, units, mem, sign):
            self.searches[-1]["tried"] += sign < 0
            return real_charge(container, subset, units, mem, sign)

        monkeypatch.setattr(paths, "search", counted_search)
        monkeypatch.setattr(search, "_gpu_sets", counted_sets)
        monkeypatch.setattr(search, "connectivity", counted_connectivity)
        monkeypatch.setattr(search, "_charge", counted_charge)

    def steps(self) -> list[int]:
        """Per search: the sets ranked plus the sets tried, what the search's budget bounds."""
        return [sum(s["listings"]) + s["tried"] for s in self.searches]


SIXTEEN_NVLINK = [["X" if i == j else "NV18" for j in range(16)] for i in range(16)]


async def test_two_eight_gpu_containers_on_a_sixteen_gpu_nvlink_node_are_placed_at_once(aiohttp_client, monkeypatch):
    from extender.core.search import SEARCH_BUDGET, SORTED_SETS

    client, ext, source = await start(aiohttp_client, [gpu_node("big", gpus=16, links=SIXTEEN_NVLINK)])
    second = {"name": "second", "resources": {"limits": {"fracgpu.io/vgpu": "800"}}}
    pod = gpu_pod("p", units=800, gpu_count=8, extra_containers=[second])
    source.add_pod(pod)
    work = SearchWork(monkeypatch)
    assert (await post(client, "filter", filter_args(pod, names=["big"])))["NodeNames"] == ["big"]
    assert (await post(client, "bind", bind_args(pod, "big"))) == {"Error": ""}
    assert sorted(g["unitsUsed"] for g in ext.ledger.gpu_table("big")) == [100] * 16
    assert len(work.searches) == 2  # Filter's and Bind's
    # the first container's 12,870 sets of 8 GPUs are taken in order of preference, not ranked one by one
    assert max(n for s in work.searches for n in s["listings"]) <= SORTED_SETS, work.searches
    assert max(work.steps()) <= SEARCH_BUDGET


async def test_a_search_that_cannot_succeed_stops_at_its_budget_counting_the_sets_it_ranks(aiohttp_client,
                                                                                          monkeypatch):
    from extender.core.search import SEARCH_BUDGET

    client, ext, _ = await start(aiohttp_client, [gpu_node("big", gpus=16, links=SIXTEEN_NVLINK)])
    # nine containers of two GPUs at 60 units: 18 GPUs' worth on 16, found only by trying every combination; each
    # set tried lists (and ranks) the next container's sets
    extra = [{"name": f"c{i}", "resources": {"limits": {"fracgpu.io/vgpu": "120"}}} for i in range(8)]
    pod = gpu_pod("p", units=120, gpu_count=2, extra_containers=extra)
    work = SearchWork(monkeypatch)
    result = await post(client, "filter", filter_args(pod, names=["big"]))
    assert result["NodeNames"] == [] and "big" in result["FailedNodes"]
    assert len(work.searches) == 1
    assert SEARCH_BUDGET // 2 < work.steps()[0] <= SEARCH_BUDGET, work.steps()  # the budget, not the GPUs, ended it


async def test_victims_and_node_names_beyond_the_limits_are_a_400(aiohttp_client):
    client, ext, _ = await start(aiohttp_client, NODES)
    pod = gpu_pod("p", units=10)
    names = [f"n{i}" for i in range(MAX_CANDIDATES + 1)]
    answer = await post(client, "filter", {"Pod": pod, "NodeNames": names}, status=400)
    assert "NodeNames" in answer["Error"] and str(MAX_CANDIDATES) in answer["Error"]
    victims = {"a": {"Pods": [{"UID": f"u{i}"} for i in range(MAX_VICTIMS + 1)]}}
    answer = await post(client, "preempt", {"Pod": pod, "NodeNameToMetaVictims": victims}, status=400)
    assert "Pods" in answer["Error"] and str(MAX_VICTIMS) in answer["Error"]


@pytest.mark.parametrize("verb", ["filter", "prioritize"])
async def test_nodes_items_beyond_the_limit_are_a_400(aiohttp_client, verb):
    client, ext, _ = await start(aiohttp_client, NODES)
    items = [{"metadata": {"name": f"n{i}"}} for i in range(MAX_CANDIDATES + 1)]
    response = await client.post(f"/{verb}", json=filter_args(gpu_pod("p", units=10), nodes=items))
    answer = (await response.text())[:200]
    assert (response.status, answer) == (400, f'{{"Error":"{verb}: Nodes.items names {MAX_CANDIDATES + 1} nodes; '
                                              f'at most {MAX_CANDIDATES} may be"}}')
    await post(client, verb, filter_args(gpu_pod("p", units=10), nodes=items[:MAX_CANDIDATES]))  # at the limit: a 200


class CountedUid(str):
    """A UID that counts the comparisons made with it: a membership test in a list compares with every element
    before it, in a set with next to none."""

    comparisons = 0

    def __eq__(self, other):
        CountedUid.comparisons += 1
        return str.__eq__(self, other)

    def __ne__(self, other):
        CountedUid.comparisons += 1
        return str.__ne__(self, other)

    __hash__ = str.__hash__


async def test_preempt_with_the_most_victims_allowed_looks_each_victim_up_once(aiohttp_client, monkeypatch):
    from extender.api.wire import ExtenderPreemptionArgs

    client, ext, _ = await start(aiohttp_client, NODES, [bound("holder", "a", units=100, memory=16000, asks=100)])
    assert ext.ledger.assignment("uid-default-holder").node == "a"
    pod = gpu_pod("p", units=200)  # both GPUs of node a: the holder of GPU 0 must go
    victims = [{"UID": f"u{i}"} for i in range(MAX_VICTIMS - 1)] + [{"UID": "uid-default-holder"}]
    args = ExtenderPreemptionArgs.model_validate({"Pod": pod, "NodeNameToMetaVictims": {"a": {"Pods": victims}}})
    proposed = ext._proposed_victims

    def counted(args):
        return {node: ([CountedUid(u) for u in uids], violations)
                for node, (uids, violations) in proposed(args).items()}

    monkeypatch.setattr(ext, "_proposed_victims", counted)
    CountedUid.comparisons = 0
    answer = ext.preempt(args)
    kept = [p.uid for p in answer.node_name_to_meta_victims["a"].pods]
    assert "uid-default-holder" in kept and len(kept) == MAX_VICTIMS  # others hold no GPUs here: kept as proposed
    # a set lookup per victim; scanning lists would compare each victim with thousands (50 million in all)
    assert CountedUid.comparisons <= MAX_VICTIMS, CountedUid.comparisons


# --------------------------------------------------------------------------------------------------- the log
def test_a_log_record_is_one_bounded_line_whatever_it_carries():
    from extender.logs import FORMAT, OneLineFormatter
    formatter = OneLineFormatter(FORMAT)

    def line(message, *args):
        return formatter.format(logging.LogRecord("fracgpu", logging.INFO, __file__, 1, message, args, None))

    forged = line("bound pod %s", "p\n2026-12-03 00:00:00 INFO fracgpu bound pod admin\x1b[2J")
    assert "\n" not in forged and "\\n2026-12-03" in forged and "\\x1b[2J" in forged
    huge = line("bind of %s failed", "x" * (10 * 1024 * 1024))
    assert len(huge) < 5000 and "more characters" in huge


async def test_bind_names_are_kubernetes_names(aiohttp_client):
    client, ext, _ = await start(aiohttp_client, NODES)
    for field, value in (("PodName", "p\nINFO forged"), ("PodName", "x" * 300), ("PodNamespace", "Default"),
                         ("Node", "a b"), ("PodUID", "u id")):
        args = bind_args(gpu_pod("p", units=10), "a") | {field: value}
        answer = await post(client, "bind", args, status=400)
        assert f"ExtenderBindingArgs.{field}" in answer["Error"] and "\n" not in answer["Error"].split(":", 1)[0]


async def test_preempt_victims_are_not_kept_after_the_answer(aiohttp_client):
    client, ext, _ = await start(aiohttp_client, NODES)
    held = len(ext._pods)
    victims = {"a": {"Pods": [{"metadata": {"name": f"v{i}", "namespace": "default", "uid": f"uid-v{i}"},
                                "spec": {"priority": i, "containers": [{"name": "c", "image": "x" * 1000}]}}
                               for i in range(200)]}}
    await post(client, "preempt", {"Pod": gpu_pod("p", units=10), "NodeNameToVictims": victims})
    assert len(ext._pods) == held


async def test_unknown_paths_and_methods_are_answered_in_the_protocols_json(aiohttp_client):
    client, ext, _ = await start(aiohttp_client, NODES)
    missing = await client.post("/filterr", data=b"{}")
    assert missing.status == 404 and "Not Found: POST /filterr" in (await missing.json())["Error"]
    wrong = await client.get("/filter")
    assert wrong.status == 405 and "allowed: POST" in (await wrong.json())["Error"]


async def test_static_mode_binds_a_pod_it_saw_only_in_filter(aiohttp_client):
    client, ext, source = await start(aiohttp_client, NODES)
    pod = gpu_pod("dry-run", units=30)  # not in the cluster file: a simulated scheduler's pod
    assert (await post(client, "filter", filter_args(pod, names=["a"])))["NodeNames"] == ["a"]
    assert (await post(client, "bind", bind_args(pod, "a"))) == {"Error": ""}
    assert ext.ledger.assignment(pod["metadata"]["uid"]).node == "a"
    assert source.dry_run[("default", "dry-run")]["node"] == "a"
    assert (await post(client, "bind", bind_args(pod, "a"))) == {"Error": ""}  # a retry: already bound there


async def test_static_mode_excludes_poisoned_objects_and_places_the_rest(aiohttp_client):
    from test_live import _poisoned_feed

    nodes, pods, events = _poisoned_feed()
    client, ext, _ = await start(aiohttp_client, nodes, pods + [e["object"] for e in events])
    assert (await client.get("/readyz")).status == 200
    inspect = await (await client.get("/inspect")).json()
    assert list(inspect["nodes"]) == ["good"] and {"huge", "gfd"} <= set(inspect["excludedNodes"])
    assert inspect["nodes"]["good"][0]["pods"] == ["default/good-pod", "default/late"]
    result = await post(client, "filter", filter_args(gpu_pod("new", units=50), names=["good", "huge", "gfd"]))
    assert result["NodeNames"] == ["good"]


async def test_connections_that_send_no_complete_request_are_closed_after_the_idle_timeout(aiohttp_client):
    client, ext, _ = await start(aiohttp_client, NODES, idle_timeout_s=0.3)
    host, port = client.server.host, client.server.port
    held = []
    for opening in (b"", b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Le"):  # silent; headers never finished
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(opening)
        held.append((reader, writer))
    for reader, writer in held:
        assert await asyncio.wait_for(reader.read(100), 5) == b""  # closed by the server, not by the guard
        writer.close()
    assert (await post(client, "filter", filter_args(gpu_pod("p", units=10), names=["a"])))["NodeNames"] == ["a"]


@contextlib.asynccontextmanager
async def capped(app, *, limit, ssl_context=None, handshake_timeout=None):
    """``app`` on a free loopback port behind the extender's own listener (serve.CappedSite): (port, runner, the
    refusals it counted)."""
    from aiohttp import web

    from extender.api.serve import CappedSite
    from testbed.controlplane import free_port

    refusals: list[str] = []
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await CappedSite(runner, "127.0.0.1", port, limit=limit, on_refusal=refusals.append, ssl_context=ssl_context,
                     handshake_timeout=handshake_timeout).start()
    try:
        yield port, runner, refusals
    finally:
        await runner.cleanup()


async def until(condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def connect(port, opening=b""):
    """A client connection that sends ``opening`` and then nothing; once the server has had time to accept it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(opening)
    await asyncio.sleep(0.01)
    return reader, writer


async def trickle(reader, writer, data: bytes, pause: float = 0.005) -> None:
    """Send ``data`` a byte at a time, until the server closes the connection."""
    for byte in data:
        if reader.at_eof():
            return
        writer.write(bytes([byte]))
        await asyncio.sleep(pause)


STALLED_BODY = b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
SLOW_HEADER = b"POST /filter HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 400


async def test_abusive_connections_at_the_limit_do_not_lock_out_normal_requests(caplog):
    import aiohttp
    from aiohttp import web

    from api_helpers import settings as extender_settings
    from extender.api.app import create_app
    from extender.api.static import StaticCluster

    app = create_app(extender_settings(), source=StaticCluster(NODES, []))
    started = []  # the paths of the requests whose handler has started

    @web.middleware
    async def seen(request, handler):
        started.append(request.path)
        return await handler(request)

    app.middlewares.append(seen)
    held = []
    async with capped(app, limit=4) as (port, runner, refusals):
        try:
            held += [await connect(port) for _ in range(10)]  # silent
            held += [await connect(port, STALLED_BODY) for _ in range(4)]  # bodies that never finish, at the limit
            await until(lambda: started.count("/filter") == 4)  # their handlers wait for the bodies
            held.append(await connect(port))  # a header sent a byte at a time
            slow_header = asyncio.create_task(trickle(*held[-1], SLOW_HEADER))
            held.append(await connect(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 50))  # never reads answers
            body = filter_args(gpu_pod("p", units=10), names=["a"])
            latencies = []
            async with aiohttp.ClientSession() as session:
                for _ in range(20):
                    start_time = time.perf_counter()
                    async with session.post(f"http://127.0.0.1:{port}/filter", json=body) as response:
                        assert response.status == 200 and (await response.json())["NodeNames"] == ["a"]
                    latencies.append(time.perf_counter() - start_time)
            slow_header.cancel()
            assert max(latencies) < 0.1, sorted(latencies)  # send to answer on loopback: about 1 ms, 10 ms at worst
            assert set(refusals) == {"idle-closed"}  # every abusive connection could make room: none was busy
            lines = [r for r in caplog.records if "connection limit (4) reached" in r.getMessage()]
            assert len(lines) == 1  # one line per kind of refusal, however many there were
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback for a closed client
            assert sum(1 for h in runner.server.connections if h.transport and not h.transport.is_closing()) <= 4
        finally:
            for _, writer in held:
                writer.close()


async def test_tls_connections_still_in_their_handshake_count_toward_the_limit_and_make_room():
    import ssl

    import aiohttp
    import trustme

    from api_helpers import settings as extender_settings
    from extender.api.app import create_app
    from extender.api.static import StaticCluster

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    app = create_app(extender_settings(), source=StaticCluster(NODES, []))
    async with capped(app, limit=4, ssl_context=server_context, handshake_timeout=60) as (port, runner, refusals):
        # ten connections that send no ClientHello, or begin one and never finish it
        held = [await connect(port, opening) for opening in [b""] * 5 + [b"\x16\x03\x01"] * 5]
        try:
            closed = asyncio.gather(*(reader.read(1) for reader, _ in held[:6]))
            assert await asyncio.wait_for(closed, 5) == [b""] * 6  # the 6 oldest made room, long before 60 s
            async with aiohttp.ClientSession() as session:
                async with session.get(f"https://127.0.0.1:{port}/healthz", ssl=client_context) as response:
                    assert response.status == 200
            assert set(refusals) == {"handshake-closed"} and len(refusals) == 7
        finally:
            for _, writer in held:
                writer.close()


async def test_a_body_that_never_finishes_is_answered_400_after_the_idle_timeout(aiohttp_client):
    client, ext, _ = await start(aiohttp_client, NODES, idle_timeout_s=0.3)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    answer = await asyncio.wait_for(reader.read(2000), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400") and b"did not arrive within 0.3 s" in answer


def _forged(pod, node, containers):
    pod["spec"]["nodeName"] = node
    pod["metadata"]["annotations"][ASSIGNMENT_ANNOTATION] = json.dumps({
        "version": 1, "podUID": pod["metadata"]["uid"], "node": node, "pool": None, "policy": "binpack",
        "containers": containers})
    return pod


def _all_gpus(name, node="a", gpus=2):
    return [{"name": name, "kind": "app", "gpus": [{"uuid": f"GPU-{node}-{i}", "index": i, "units": 100,
                                                    "memoryMiB": 16000} for i in range(gpus)]}]


@pytest.mark.parametrize("case", ["no-resources", "more-than-asked", "other-container", "init-as-app"])
async def test_an_assignment_that_is_not_what_the_pod_asks_for_is_not_adopted(aiohttp_client, case):
    if case == "no-resources":  # the tenant's attack: a pod asking nothing, patched to hold every GPU of node a
        pod = gpu_pod("thief")
        pod["spec"]["containers"][0]["resources"] = {}
        pod = _forged(pod, "a", _all_gpus("main"))
    elif case == "more-than-asked":
        pod = _forged(gpu_pod("thief", units=10), "a", _all_gpus("main"))
    elif case == "other-container":
        pod = _forged(gpu_pod("thief", units=100), "a", _all_gpus("sidecar")[:1])
    else:
        pod = _forged(gpu_pod("thief", units=100), "a", [dict(_all_gpus("main", gpus=1)[0], kind="init")])
    client, ext, _ = await start(aiohttp_client, NODES, [pod])
    assert ext.ledger.assignment(pod["metadata"]["uid"]) is None
    assert any("default/thief" in w and "not adopted" in w for w in ext.warnings)
    result = await post(client, "filter", filter_args(gpu_pod("p", units=200), names=["a"]))
    assert result["NodeNames"] == ["a"]  # node a's GPUs are free for others


def test_an_assignment_that_matches_its_pod_is_adopted():
    from extender.core.loading import build_ledger

    pod = _forged(gpu_pod("fair", units=200, memory_mib=20000), "a", [
        {"name": "main", "kind": "app", "gpus": [{"uuid": f"GPU-a-{i}", "index": i, "units": 100,
                                                  "memoryMiB": 10000} for i in range(2)]}])
    ledger, report = build_ledger(CoreSettings(), NODES, [pod])
    assert ledger.assignment(pod["metadata"]["uid"]) is not None and not report.warnings
