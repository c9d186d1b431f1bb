"""Reading pods into requests: the resource model of docs/design.md, and every kind of bad input."""

import pytest

from extender.core import CoreSettings, InvalidRequest, parse_pod
from extender.core.quantity import parse_integer_quantity
from extender.core.resources import model_matches, phases_of
from extender.testing.factories import container, gpu_pod

S = CoreSettings()


@pytest.mark.parametrize(
    "units, memory, count, expected",
    [
        # (units per GPU, GPUs, MiB per GPU)
        (40, None, None, (40, 1, None)),  # a share of one GPU
        (100, 8000, None, (100, 1, 8000)),  # exactly one whole GPU
        (300, 30000, None, (100, 3, 10000)),  # 300 > 100: three whole GPUs, 30000 / 3 = 10000 MiB each
        (80, 10000, 2, (40, 2, 5000)),  # gpu-count 2: 80 / 2 = 40 units and 10000 / 2 = 5000 MiB on each
        (90, 10001, 3, (30, 3, 3334)),  # 10001 / 3 = 3333.67, rounded up to 3334 (never under-charge)
        (200, None, 4, (50, 4, None)),  # 200 over 4 GPUs: 50 each
        ("1k", None, 10, (100, 10, None)),  # quantities: 1k = 1000 units over 10 GPUs
    ],
)
def test_container_need(units, memory, count, expected):
    request = parse_pod(gpu_pod("p", units=units, memory_mib=memory, gpu_count=count), S)
    need = request.single
    assert (need.units, need.count, need.memory_mib) == expected


def test_units_per_gpu_is_configurable():
    # unitsPerGpu 10 (a 10-vGPU device plugin): 30 units are three whole GPUs
    settings = CoreSettings(units_per_gpu=10)
    need = parse_pod(gpu_pod("p", units=30, settings=settings), settings).single
    assert (need.units, need.count) == (10, 3)


def test_resource_names_are_configurable():
    settings = CoreSettings(vgpu_resource="example.com/gpu-share", memory_resource="example.com/gpu-mem")
    pod = gpu_pod("p", units=25, memory_mib=1000, settings=settings)
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"example.com/gpu-share": "25",
                                                                   "example.com/gpu-mem": "1000"}
    assert parse_pod(pod, settings).single.units == 25
    assert not parse_pod(pod, S).wants_gpu  # the default names do not see it


def test_pod_without_our_resources_wants_nothing():
    request = parse_pod(gpu_pod("p"), S)
    assert not request.wants_gpu and request.containers == ()


def test_requests_only_is_read_like_limits():
    pod = gpu_pod("p")
    pod["spec"]["containers"][0]["resources"] = {"requests": {"fracgpu.io/vgpu": "30"}}
    assert parse_pod(pod, S).single.units == 30


def test_labels_and_annotations():
    request = parse_pod(gpu_pod("p", units=10, models="A100| H100 |A100", pool="train"), S)
    assert request.models == ("A100", "H100") and request.pool == "train"
    assert parse_pod(gpu_pod("p", units=10, pool="train"), CoreSettings(pools_enabled=False)).pool is None


def test_init_containers_follow_the_effective_request_rule():
    pod = gpu_pod(
        "p", units=30,
        init_containers=[container("warmup", units=80), container("proxy", units=10, sidecar=True),
                         container("late-init", units=50)],
    )
    request = parse_pod(pod, S)
    assert [c.kind for c in request.containers] == ["init", "sidecar", "init", "app"]
    # warmup alone; late-init with the proxy sidecar started before it; finally proxy + main
    assert request.phases == ((0,), (1, 2), (1, 3))


@pytest.mark.parametrize(
    "kinds, phases",
    [
        (("app",), ((0,),)),
        (("app", "app"), ((0, 1),)),
        (("init", "app"), ((0,), (1,))),
        (("sidecar", "init", "app"), ((0, 1), (0, 2))),
        (("init", "init"), ((0,), (1,))),
    ],
)
def test_phases(kinds, phases):
    assert phases_of(kinds) == phases


@pytest.mark.parametrize(
    "allowed, model, matches",
    [
        (("H100",), "NVIDIA H100 80GB HBM3", True),
        (("H100",), "NVIDIA-H100-80GB-HBM3", True),
        (("h100",), "NVIDIA H100 80GB HBM3", True),
        (("A100",), "NVIDIA H100 80GB HBM3", False),
        (("V100M16",), "V100M32", False),
        (("V100M16", "T4"), "T4", True),
        (None, "anything", True),
    ],
)
def test_model_matching(allowed, model, matches):
    assert model_matches(allowed, model) is matches


@pytest.mark.parametrize(
    "value, expected",
    [("40", 40), (40, 40), ("1k", 1000), ("2Ki", 2048), ("1e3", 1000), ("1500m", None), ("0.5", None),
     ("abc", None), (True, None), ([], None), ("2000m", 2), (3.0, 3), (2.5, None)],
)
def test_quantities(value, expected):
    if expected is None:
        with pytest.raises(ValueError):
            parse_integer_quantity(value)
    else:
        assert parse_integer_quantity(value) == expected


def _with_limits(limits, **kw):
    pod = gpu_pod("bad", **kw)
    pod["spec"]["containers"][0]["resources"] = {"limits": limits}
    return pod


BAD_PODS = [
    ("above one GPU, not whole", _with_limits({"fracgpu.io/vgpu": "150"}), "must be a multiple of 100"),
    ("negative units", _with_limits({"fracgpu.io/vgpu": "-10"}), "must not be negative"),
    ("negative memory", _with_limits({"fracgpu.io/vgpu": "10", "fracgpu.io/vgpu-memory": "-1"}), "must not be negative"),
    ("fractional units", _with_limits({"fracgpu.io/vgpu": "0.5"}), "not a whole number"),
    ("garbage units", _with_limits({"fracgpu.io/vgpu": "lots"}), "not a Kubernetes quantity"),
    ("units as a list", _with_limits({"fracgpu.io/vgpu": [1]}), "not a quantity"),
    ("memory without units", _with_limits({"fracgpu.io/vgpu-memory": "1000"}), "without fracgpu.io/vgpu"),
    ("uneven split", gpu_pod("bad", units=90, gpu_count=4), "cannot be split evenly over fracgpu.io/gpu-count=4"),
    ("split above a GPU", gpu_pod("bad", units=300, gpu_count=2), "150 per GPU, more than unitsPerGpu=100"),
    ("count zero", gpu_pod("bad", units=10, gpu_count=0), "positive whole number"),
    ("count not a number", gpu_pod("bad", units=10, gpu_count="two"), "positive whole number"),
    ("count without GPU ask", gpu_pod("bad", gpu_count=2), "no container asks for fracgpu.io/vgpu"),
    ("empty model list", gpu_pod("bad", units=10, models=" | "), "names no model"),
    ("requests differ from limits", None, "requests (20) must equal limits (10)"),
    ("containers not a list", None, "spec.containers: must be a list"),
    ("container not an object", None, "spec.containers[0]: must be an object"),
    ("resources not an object", None, "spec.containers[0].resources: must be an object"),
    ("metadata not an object", {"metadata": [], "spec": {}}, "metadata: must be an object"),
    ("no name", {"metadata": {}, "spec": {}}, "a pod needs a name"),
    ("not an object", ["pod"], "must be a JSON object"),
]


def _special(name):
    pod = gpu_pod("bad", units=10)
    if name == "requests differ from limits":
        pod["spec"]["containers"][0]["resources"] = {"limits": {"fracgpu.io/vgpu": "10"},
                                                     "requests": {"fracgpu.io/vgpu": "20"}}
    elif name == "containers not a list":
        pod["spec"]["containers"] = {"main": {}}
    elif name == "container not an object":
        pod["spec"]["containers"] = ["main"]
    elif name == "resources not an object":
        pod["spec"]["containers"][0]["resources"] = "lots"
    return pod


@pytest.mark.parametrize("name, pod, message", BAD_PODS, ids=[b[0] for b in BAD_PODS])
def test_bad_pods_are_rejected_with_the_field_and_rule(name, pod, message):
    with pytest.raises(InvalidRequest) as error:
        parse_pod(pod if pod is not None else _special(name), S)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"units_per_gpu": 0}, "units_per_gpu must be a positive integer"),
     ({"reserve_mib": -1}, "reserve_mib must be a non-negative integer"),
     ({"reserve_percent": 100}, "reserve_percent must be in [0, 100)"),
     ({"vgpu_resource": "vgpu"}, "vgpu_resource must be an extended resource name"),
     ({"memory_resource": "fracgpu.io/vgpu"}, "must differ")],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError) as error:
        CoreSettings(**kwargs)
    assert message in str(error.value)


def test_reserve_arithmetic():
    # 81920 MiB GPU, 512 MiB + 2%: 512 + ceil(81920 * 2 / 100) = 512 + 1639 = 2151
    assert CoreSettings(reserve_mib=512, reserve_percent=2.0).reserve_for(81920) == 2151
    assert CoreSettings(reserve_mib=100_000).reserve_for(16000) == 16000  # never more than the GPU


# ---------------------------------------------------------------------------------------------------- pools
def _affinity(*terms):
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": list(term)} for term in terms]}}}


def test_a_pods_pool_comes_from_its_label_node_selector_or_required_affinity_on_the_pool_label():
    settings = CoreSettings(pool_label="node.kubernetes.io/gpu-pool")
    key = "node.kubernetes.io/gpu-pool"
    pod = gpu_pod("p", units=10)
    assert parse_pod(pod, settings).pool is None
    pod["metadata"]["labels"] = {key: "batch"}
    assert parse_pod(pod, settings).pool == "batch"
    pod = gpu_pod("p", units=10)
    pod["spec"]["nodeSelector"] = {key: "training", "zone": "a"}
    assert parse_pod(pod, settings).pool == "training"
    pod = gpu_pod("p", units=10)
    one = {"key": key, "operator": "In", "values": ["online"]}
    pod["spec"]["affinity"] = _affinity([one, {"key": "zone", "operator": "In", "values": ["a", "b"]}], [one])
    assert parse_pod(pod, settings).pool == "online"
    # a term that does not restrict the pool lets the pod go anywhere: the affinity names no pool
    pod["spec"]["affinity"] = _affinity([one], [{"key": "zone", "operator": "Exists"}])
    assert parse_pod(pod, settings).pool is None
    # the default key is fracgpu.io/pool: a selector on another key is no pool
    pod["spec"]["nodeSelector"] = {key: "training"}
    assert parse_pod(pod, CoreSettings()).pool is None


def test_the_pools_label_comes_first_and_an_affinity_names_a_pool_only_when_it_allows_one():
    settings = CoreSettings(pool_label="karpenter.sh/nodepool")
    key = "karpenter.sh/nodepool"
    pod = gpu_pod("p", units=10)
    pod["metadata"]["labels"] = {key: "a"}
    pod["spec"]["nodeSelector"] = {key: "b"}
    assert parse_pod(pod, settings).pool == "a"  # the pod's own label, then its selector, then its affinity
    pod = gpu_pod("p", units=10)
    both = {"key": key, "operator": "In", "values": ["a", "b"]}
    pod["spec"]["affinity"] = _affinity([both])
    assert parse_pod(pod, settings).pool is None  # several pools: none (the pod fits only pool-less nodes)
    # a term's expressions are ANDed: In [a, b] and In [a] is a; NotIn removes
    pod["spec"]["affinity"] = _affinity([both, {"key": key, "operator": "In", "values": ["a"]}])
    assert parse_pod(pod, settings).pool == "a"
    pod["spec"]["affinity"] = _affinity([both, {"key": key, "operator": "NotIn", "values": ["a"]}])
    assert parse_pod(pod, settings).pool == "b"
    # what the API server would refuse is not read, and never fails the pod
    pod["spec"]["affinity"] = _affinity([{"key": key, "operator": "In", "values": [{"x": 1}]}])
    assert parse_pod(pod, settings).pool is None
    pod["spec"]["affinity"] = {"nodeAffinity": "not an object"}
    assert parse_pod(pod, settings).pool is None


def test_the_pool_label_setting_must_be_a_label_key():
    for bad in ("", "a b", "/pool", "x/" + "n" * 64, 7):
        with pytest.raises(ValueError, match="pool_label must be a label key"):
            CoreSettings(pool_label=bad)
    assert CoreSettings(pool_label="eks.amazonaws.com/nodegroup").pool_label == "eks.amazonaws.com/nodegroup"
