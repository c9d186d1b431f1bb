"""Fuzzing every POST verb: valid requests with one or more fields replaced, removed or added, by hostile values.

For every case: the answer is 200, or a 400/413 in the protocol's JSON whose message starts with the verb and
names a field that was mutated (its JSON key, or a key within it) or, for a body that is no longer JSON, the
position; never 5xx. What a 200 answer adds holds only integers Go's int64 can hold, and NumPDBViolations within
0..2^63 - 1. Filter, Prioritize and Preempt never change the ledger, and neither does a Bind that is refused.
Each answer costs less than a hang guard of 2 s of this process's CPU time (client and server share it; the
answers take milliseconds; CPU time, not wall time, so that a busy machine does not trip it). The ``ci`` profile
runs 350 cases per request form (2,800 in all, 8 forms), and each form's ``MUST_TRY`` fields whatever the draw;
``HYPOTHESIS_PROFILE=fuzz`` runs 10,000 per form for local runs.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from api_helpers import bind_args, filter_args, gpu_node, gpu_pod, settings as extender_settings
from extender.api.app import EXTENDER, create_app
from extender.api.static import StaticCluster
from extender.core.settings import ASSIGNMENT_ANNOTATION

CASES = {"ci": 350, "dev": 60, "fuzz": 10_000}
MAX_INT64 = 2**63 - 1
HANG_GUARD_S = 2.0


def _cases() -> int:
    import os

    return CASES.get(os.environ.get("HYPOTHESIS_PROFILE", "ci"), CASES["ci"])


NODES = [gpu_node("a", gpus=2, memory_mib=16384, pool="team"), gpu_node("b", gpus=4, memory_mib=16384),
         gpu_node("c", gpus=8, links=[["X" if i == j else "NV4" for j in range(8)] for i in range(8)])]


def _pods():
    holder = gpu_pod("holder", units=60, memory_mib=4000)
    holder["spec"]["nodeName"] = "b"
    holder["metadata"]["annotations"][ASSIGNMENT_ANNOTATION] = json.dumps({
        "version": 1, "podUID": holder["metadata"]["uid"], "node": "b", "pool": None, "policy": "binpack",
        "containers": [{"name": "main", "kind": "app", "gpus": [{"uuid": "GPU-b-0", "index": 0, "units": 60,
                                                                  "memoryMiB": 4000}]}]})
    return [holder, gpu_pod("waiting", units=30, memory_mib=2000), gpu_pod("pair", units=80, gpu_count=2)]


def _bases() -> dict[str, tuple[str, dict]]:
    pod = gpu_pod("waiting", units=30, memory_mib=2000, models="H100")
    pair = gpu_pod("pair", units=80, gpu_count=2)
    victims = {"b": {"Pods": [{"metadata": {"name": "holder", "namespace": "default", "uid": "uid-default-holder"},
                               "spec": {"priority": 5}}], "NumPDBViolations": 0}}
    return {
        "filter-names": ("filter", filter_args(pod, names=["a", "b", "c", "nope"])),
        "filter-nodes": ("filter", filter_args(pair, nodes=copy.deepcopy(NODES))),
        "prioritize-names": ("prioritize", filter_args(pair, names=["b", "c"])),
        "prioritize-nodes": ("prioritize", filter_args(pod, nodes=copy.deepcopy(NODES))),
        "bind": ("bind", bind_args(pod, "b")),
        "preempt-victims": ("preempt", {"Pod": pod, "NodeNameToVictims": victims}),
        "preempt-meta": ("preempt", {"Pod": pod, "NodeNameToMetaVictims": {
            "b": {"Pods": [{"UID": "uid-default-holder"}], "NumPDBViolations": 1}}}),
        "preempt-nothing": ("preempt", {"Pod": gpu_pod("p", units=10), "NodeNameToMetaVictims": None}),
    }


HOSTILE = st.one_of(
    st.none(), st.booleans(),
    st.sampled_from([0, -1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 10**30, 10**400]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e308, -0.0, 0.5, 1e-300]),
    st.sampled_from(["", " ", "²", "٣", "1e1000000", "1e20", "9223372036854775808", "99999999999999999999Ei",
                     "-5", "0.5", "500m", "1Ki", "NaN", "null", "{", "[]", "\n", "\x00", "a\nINFO forged",
                     "\u2028", "x" * 5000, "H100|", "|", "NV18", "SYS", "GPU-a-0", "a", "b", "nope", "default",
                     "uid-default-holder", "kube-system", '{"version": 1}', '{"version":1,"gpus":[]}']),
    st.text(max_size=40),
    st.lists(st.sampled_from([None, 1, "a", {}, []]), max_size=4),
    st.dictionaries(st.sampled_from(["metadata", "uid", "name", "items", "Pods", "spec", "x"]),
                    st.sampled_from([None, 1, "a", {}, [], True]), max_size=3),
    st.recursive(st.none(), lambda inner: st.lists(inner, max_size=1), max_leaves=40),  # deeply nested
)


def _paths(node, prefix=()):
    """Every field of a JSON tree, as a path of keys and indexes (the root is the empty path)."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


@st.composite
def mutated(draw, body: dict):
    """``body`` with one to three mutations, each at a field drawn uniformly from all of the tree's: replaced by a
    hostile value, removed, or given an unknown sibling; and what was mutated, as (the path, the value there
    before)."""
    body = copy.deepcopy(body)
    targets = []
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(body))[1:] or [("Unknown",)]))  # an emptied body: add a field
        parent = body
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        action = draw(st.sampled_from(["replace", "replace", "replace", "remove", "add"]))
        if action == "add" and isinstance(parent, dict):
            key = draw(st.sampled_from(["extra", "uid", "UID", "metadata", "x" * 300]))
            path = (*path[:-1], key)
        before = parent.get(key) if isinstance(parent, dict) else parent[key]
        targets.append((path, copy.deepcopy(before)))
        if action == "remove" and isinstance(parent, dict):
            parent.pop(key, None)
        else:
            parent[key] = draw(HOSTILE)
    return body, targets


def replaced(body: dict, path: tuple, value) -> tuple[dict, list]:
    """``body`` with the field at ``path`` set to ``value``: a case that must be tried, as ``mutated`` gives it."""
    body = copy.deepcopy(body)
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    before = copy.deepcopy(parent[path[-1]])
    parent[path[-1]] = value
    return body, [(path, before)]


def _names(path: tuple, before) -> set[str]:
    """The names a message may give for a mutation at ``path``: its key, or a key of what was there."""
    names = {k for p in _paths(before) for k in p if isinstance(k, str)}
    names.update([k for k in path if isinstance(k, str)][-1:])
    return names


def names_a_mutated_field(message: str, targets: list) -> bool:
    if "body is not JSON" in message:  # a hostile number beyond what a JSON parser reads: it says where
        return re.search(r"\(char \d+\)", message) is not None
    return any(name in message for path, before in targets for name in _names(path, before))


def _integers(node):
    if isinstance(node, bool):
        return
    if isinstance(node, int):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _integers(value)
    elif isinstance(node, list):
        for value in node:
            yield from _integers(value)


def decodable(answer) -> bool:
    """A 200 answer kube-scheduler can read: integers within Go's int64, NumPDBViolations within 0..2^63 - 1. (The
    Node objects Filter gives back are the request's own, as they came.)"""
    ours = {k: v for k, v in answer.items() if k != "Nodes"} if isinstance(answer, dict) else answer
    victims = (answer.get("NodeNameToMetaVictims") or {}) if isinstance(answer, dict) else {}
    return (all(-MAX_INT64 - 1 <= n <= MAX_INT64 for n in _integers(ours))
            and all(0 <= v.get("NumPDBViolations", 0) <= MAX_INT64 for v in victims.values()))


class Harness:
    """One extender over a static cluster, served on loopback for the whole module."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.source = StaticCluster(copy.deepcopy(NODES), _pods())
        app = create_app(extender_settings(), source=self.source)
        self.extender = app[EXTENDER]
        self.client = TestClient(TestServer(app), loop=self.loop)
        self.loop.run_until_complete(self.client.start_server())
        for _ in range(100):
            if self.extender.synced:
                break
            self.loop.run_until_complete(asyncio.sleep(0.01))

    def post(self, verb: str, body: bytes) -> tuple[int, dict | list, float]:
        async def go():
            response = await self.client.post(f"/{verb}", data=body, headers={"Content-Type": "application/json"})
            return response.status, await response.json()

        start = time.process_time()
        status, answer = self.loop.run_until_complete(go())
        return status, answer, time.process_time() - start

    def inspect(self) -> dict:
        async def go():
            return await (await self.client.get("/inspect")).json()

        return self.loop.run_until_complete(go())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture(scope="module")
def harness():
    h = Harness()
    yield h
    h.close()


def _encode(body) -> bytes:
    return json.dumps(body).encode()  # Python's json writes integers of any size, as a hostile client can


BASES = _bases()
# fields whose hostile values every run tries, whatever the draw: bounds a 200 would hide
MUST_TRY = {"preempt-victims": [("NodeNameToVictims", "b", "NumPDBViolations")],
            "preempt-meta": [("NodeNameToMetaVictims", "b", "NumPDBViolations")]}
MUST_TRY_VALUES = [2**63, -1, 10**30]


def _with_examples(form: str, test):
    for path in MUST_TRY.get(form, []):
        for value in MUST_TRY_VALUES:
            test = example(mutation=replaced(BASES[form][1], path, value))(test)
    return test


@pytest.mark.parametrize("form", sorted(BASES))
def test_every_verb_answers_hostile_requests_with_200_or_a_400_and_changes_nothing(harness, form):
    verb, base = BASES[form]

    @settings(max_examples=_cases(), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(mutation=mutated(base))
    def case(mutation):
        body, targets = mutation
        before = harness.extender.ledger.snapshot()
        inspect = harness.inspect()
        status, answer, seconds = harness.post(verb, _encode(body))
        assert seconds < HANG_GUARD_S, (form, body)
        assert status in (200, 400, 413), (status, answer, body)
        if status != 200:
            assert isinstance(answer, dict) and answer["Error"].startswith(f"{verb}: "), answer
        if status == 400:
            assert names_a_mutated_field(answer["Error"], targets), (answer, [path for path, _ in targets])
        if status == 200:
            assert decodable(answer), (answer, body)
        refused_bind = verb == "bind" and (status != 200 or answer.get("Error"))
        if verb != "bind" or refused_bind:
            assert harness.extender.ledger.snapshot() == before, (form, body)
            assert harness.inspect() == inspect
        elif harness.extender.ledger.snapshot() != before:  # a bind that took: undo it for the next case
            for uid in [a.pod_uid for a in harness.extender.ledger.assignments()]:
                if uid != "uid-default-holder":
                    harness.extender.on_pod_deleted({"metadata": {"uid": uid}})
            harness.source.pods[("default", "waiting")] = _pods()[1]

    _with_examples(form, case)()
