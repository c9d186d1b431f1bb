"""The wire format, pinned to upstream's TestCompatibility (k8s.io/kube-scheduler/extender/v1/types_test.go):
Go field names out, any casing in, nulls for nil pointers."""

import orjson
import pytest

from extender.api.wire import (
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderBindingResult,
    ExtenderFilterResult,
    ExtenderPreemptionArgs,
    ExtenderPreemptionResult,
    HostPriority,
    HostPriorityList,
    MetaPod,
    MetaVictims,
    encode_priorities,
)

POD = {"metadata": {"name": "podname", "creationTimestamp": None}, "spec": {"containers": None}, "status": {}}

# (model, object, the JSON Go emits for it). Go emits every field; upstream's golden strings are Go's output
# for the same values, with the fields it leaves nil shown here as null.
GOLDEN = [
    (ExtenderPreemptionResult,
     ExtenderPreemptionResult(node_name_to_meta_victims={"foo": MetaVictims(pods=[MetaPod(uid="myuid")], num_pdb_violations=1)}),
     '{"NodeNameToMetaVictims":{"foo":{"Pods":[{"UID":"myuid"}],"NumPDBViolations":1}}}'),
    (ExtenderBindingArgs,
     ExtenderBindingArgs(pod_name="mypodname", pod_namespace="mypodnamespace", pod_uid="mypoduid", node="mynode"),
     '{"PodName":"mypodname","PodNamespace":"mypodnamespace","PodUID":"mypoduid","Node":"mynode"}'),
    (ExtenderBindingResult, ExtenderBindingResult(error="myerror"), '{"Error":"myerror"}'),
    (HostPriority, HostPriority(host="myhost", score=1), '{"Host":"myhost","Score":1}'),
    (ExtenderFilterResult,
     ExtenderFilterResult(node_names=["node1"], failed_nodes={"foo": "bar"}, error="myerror"),
     '{"Nodes":null,"NodeNames":["node1"],"FailedNodes":{"foo":"bar"},"FailedAndUnresolvableNodes":null,'
     '"Error":"myerror"}'),
    (ExtenderArgs, ExtenderArgs(pod=POD, node_names=["node1"]),
     '{"Pod":' + orjson.dumps(POD).decode() + ',"Nodes":null,"NodeNames":["node1"]}'),
]


@pytest.mark.parametrize("model, obj, expected", GOLDEN, ids=[g[0].__name__ for g in GOLDEN])
def test_golden_json_both_ways(model, obj, expected):
    assert obj.dumps().decode() == expected
    assert model.model_validate(orjson.loads(expected)) == obj
    # Go decodes case-insensitively; upstream's test lower-cases the whole document and expects the same object
    # (for the args, whose Pod stays a plain dict here, the Pod's own keys are the kubelet's business)
    if model is not ExtenderArgs:
        assert model.model_validate(orjson.loads(expected.lower())) == obj


def test_lower_case_keys_and_nulls_are_accepted():
    args = ExtenderArgs.model_validate({"pod": {"metadata": {"name": "p"}}, "nodes": None, "nodenames": ["a"]})
    assert args.node_names == ["a"] and args.nodes is None and args.pod["metadata"]["name"] == "p"
    preempt = ExtenderPreemptionArgs.model_validate(
        {"pod": POD, "nodeNameToMetaVictims": {"n": {"pods": [{"uid": "u"}], "numPDBViolations": 2}, "m": None}})
    assert preempt.node_name_to_meta_victims["n"].pods[0].uid == "u" and preempt.node_name_to_meta_victims["m"] is None


def test_prioritize_answer_is_a_bare_array():
    body = HostPriorityList([HostPriority(host="a", score=10), HostPriority(host="b", score=0)]).dumps()
    assert body == b'[{"Host":"a","Score":10},{"Host":"b","Score":0}]'
    assert encode_priorities([("a", 10), ("b", 0)]) == body  # the fast encoder the server uses
