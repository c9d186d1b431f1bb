"""Per-pod GPU usage in the agent: NVML processes (the fake NVML's), cgroup files of a test /proc, the node's pods;
attribution, flags and their events, the metrics and the usage ConfigMap. A real API server and real cgroups of
a real kubelet's containers are exercised in tests/e2e/test_node.py."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from extender.agent.fake import FakeNvml
from extender.agent.monitor import MonitorSettings, UsageMonitor, usage_configmap_name
from extender.agent.usage import OVER_MEMORY, UNASSIGNED, parse_cgroup, pod_info, read_processes
from extender.core.assignment import Assignment, ContainerAssignment, GpuShare, to_annotation
from extender.core.settings import ASSIGNMENT_ANNOTATION

FIXTURE = "h100x8-nvswitch"
UUID = [f"GPU-5e7c1f2a-0000-4000-8000-00000000000{i}" for i in range(8)]
POD_UID = "0f1e2d3c-4b5a-4697-8877-665544332211"
CID = "a" * 64


def cgroup_v1(uid: str, cid: str, qos: str = "burstable") -> str:
    """/proc/<pid>/cgroup of a container under kubelet's cgroupfs driver on cgroup v1 (this machine's kubelet)."""
    return "".join(f"{n}:{c}:/kubepods/{qos}/pod{uid}/{cid}\n"
                   for n, c in enumerate(["cpu,cpuacct", "memory", "pids", "devices"], start=2)) + "1:name=systemd:/\n"


def cgroup_v2_systemd(uid: str, cid: str, runtime: str = "cri-containerd", qos: str = "besteffort") -> str:
    slug = uid.replace("-", "_")
    return (f"0::/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{slug}.slice/{runtime}-{cid}.scope\n")


def gpu_pod(name: str, uid: str, containers: dict[str, str], shares: dict[str, list[tuple[int, int]]],
            namespace: str = "team-a") -> dict:
    """A bound pod: ``containers`` name -> runtime ID, ``shares`` name -> [(GPU index, MiB)] in its assignment."""
    assignment = Assignment(
        pod_uid=uid, namespace=namespace, name=name, node="gpu-1", pool=None, policy="binpack",
        containers=tuple(ContainerAssignment(name=c, kind="app", gpus=tuple(
            GpuShare(index=i, uuid=UUID[i], units=25, memory_mib=mib) for i, mib in gpus))
            for c, gpus in shares.items()))
    return {"metadata": {"name": name, "namespace": namespace, "uid": uid,
                         "annotations": {ASSIGNMENT_ANNOTATION: to_annotation(assignment)} if shares else {}},
            "status": {"containerStatuses": [{"name": c, "containerID": f"containerd://{cid}"}
                                             for c, cid in containers.items()]}}


class FakeApi:
    def __init__(self, pods, fail=0):
        self.pods = pods
        self.fail = fail  # the next `fail` pod lists raise
        self.lists = 0
        self.events: list[tuple[str, dict]] = []
        self.configmaps: list[dict] = []

    def get(self, name):
        return {"metadata": {"name": name, "uid": "node-uid-1"}}

    def list_pods(self, node):
        self.lists += 1
        if self.fail:
            self.fail -= 1
            raise ConnectionRefusedError("connection refused")
        return copy.deepcopy(self.pods)

    def create_event(self, namespace, body):
        self.events.append((namespace, body))

    def apply_configmap(self, namespace, body):
        self.configmaps.append(copy.deepcopy(body))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def machine(tmp_path):
    """The fixture machine, initialised, and a /proc of its own: ``add(pid, gpu, mib, cgroup, sm=None)``."""
    nvml = FakeNvml.fixture(FIXTURE)
    nvml.nvmlInit()
    proc = tmp_path / "proc"

    def add(pid, gpu, mib, cgroup, sm=None):
        entry = {"pid": pid, **({"usedMiB": mib} if mib is not None else {}), **({"smUtil": sm} if sm is not None else {})}
        nvml.gpus[gpu].setdefault("processes", []).append(entry)
        (proc / str(pid)).mkdir(parents=True, exist_ok=True)
        (proc / str(pid) / "cgroup").write_text(cgroup)

    nvml.add = add
    nvml.proc = proc
    return nvml


def monitor_for(machine, api, clock=None, **settings):
    return UsageMonitor(machine, api, "gpu-1", MonitorSettings(proc_root=machine.proc, **settings),
                        monotonic=clock or Clock())


# ---------------------------------------------------------------------------------------------------- cgroups
@given(uid=st.uuids().map(str), cid=st.binary(min_size=32, max_size=32).map(bytes.hex),
       qos=st.sampled_from(["burstable", "besteffort"]),
       runtime=st.sampled_from(["cri-containerd", "crio", "docker"]))
def test_a_containers_cgroup_names_its_pod_and_container_in_every_layout(uid, cid, qos, runtime):
    assert parse_cgroup(cgroup_v1(uid, cid, qos)) == (uid, cid)
    assert parse_cgroup(cgroup_v2_systemd(uid, cid, runtime, qos)) == (uid, cid)
    assert parse_cgroup(f"0::/kubepods/{qos}/pod{uid}/{cid}\n") == (uid, cid)  # v2, cgroupfs driver
    assert parse_cgroup(f"0::/kubepods/pod{uid}/{cid}\n") == (uid, cid)  # Guaranteed QoS
    assert parse_cgroup(f"0::/kubepods.slice/kubepods-pod{uid.replace('-', '_')}.slice/cri-containerd-{cid}.scope")\
        == (uid, cid)
    # seen from the agent's own cgroup namespace; a runtime's sub-cgroup (crun's /container)
    assert parse_cgroup(f"0::/../../kubepods/{qos}/pod{uid}/{cid}\n") == (uid, cid)
    assert parse_cgroup(cgroup_v2_systemd(uid, cid, runtime, qos).replace(".scope\n", ".scope/container\n")) == (uid, cid)


@pytest.mark.parametrize("text", [
    "0::/system.slice/containerd.service\n",                      # a host daemon
    "0::/user.slice/user-0.slice/session-3.scope\n",               # someone's shell
    f"0::/kubepods/burstable/pod{POD_UID}\n",                      # the pod's cgroup itself, no container
    f"0::/kubepods/burstable/pod{POD_UID}/{'a' * 63}\n",           # not a container ID
    "", "\x00\xff garbage", ":" * 5000,
])
def test_a_process_in_no_containers_cgroup_belongs_to_no_pod(text):
    assert parse_cgroup(text) is None


# ---------------------------------------------------------------------------------------------------- NVML
def test_processes_carry_their_memory_and_utilisation_and_a_failing_gpu_is_named(machine):
    machine.add(100, 0, 2048, "", sm=30)
    machine.add(101, 0, None, "")        # the driver does not say (NVML's None)
    machine.gpus[0]["mpsProcesses"] = [{"pid": 102, "usedMiB": 512}]
    machine.gpus[3]["fail"] = {"processes": "NoPermission"}
    reading = read_processes(machine, {})
    got = {(p.gpu, p.pid): (p.used_mib, p.sm_percent) for p in reading.processes}
    assert got == {(0, 100): (2048, 30), (0, 101): (None, None), (0, 102): (512, None)}
    assert 3 not in reading.gpus and len(reading.gpus) == 7
    assert reading.problems == ["GPU 3 processes: Insufficient Permissions"]


def test_utilisation_samples_are_read_once(machine):
    machine.add(100, 0, 2048, "", sm=30)
    last: dict[int, int] = {}
    assert read_processes(machine, last).processes[0].sm_percent == 30
    assert last == {0: machine.clock}
    assert read_processes(machine, last).processes[0].sm_percent is None  # none since: NVML answers NotFound
    machine.clock += 1
    assert read_processes(machine, last).processes[0].sm_percent == 30


# ---------------------------------------------------------------------------------------------------- attribution
def test_each_container_is_charged_its_own_processes_and_flagged_when_it_misuses_a_gpu(machine):
    other_uid, cid_b, cid_c = "11111111-2222-4333-8444-555555555555", "b" * 64, "c" * 64
    pods = [gpu_pod("infer", POD_UID, {"main": CID, "side": cid_b}, {"main": [(0, 8192)], "side": [(1, 4096)]}),
            gpu_pod("rogue", other_uid, {"main": cid_c}, {})]
    machine.add(100, 0, 6000, cgroup_v1(POD_UID, CID), sm=20)
    machine.add(101, 0, 3000, cgroup_v1(POD_UID, CID), sm=15)     # main: 9,000 MiB on GPU 0 > its 8,192
    machine.add(102, 1, 1000, cgroup_v1(POD_UID, cid_b))           # side: within its share
    machine.add(103, 2, 500, cgroup_v1(POD_UID, cid_b))            # side on GPU 2: not assigned
    machine.add(104, 4, 700, cgroup_v1(other_uid, cid_c))          # a pod with no assignment at all
    machine.add(105, 5, 300, "0::/system.slice/dcgm.service\n")    # a host process
    api = FakeApi(pods)
    rows = monitor_for(machine, api).observe()
    got = {(r.pod, r.container, r.gpu): (r.used_mib, r.share_mib, r.processes, r.sm_percent, r.violation)
           for r in rows.containers}
    assert got == {
        ("infer", "main", 0): (9000, 8192, 2, 35, OVER_MEMORY),
        ("infer", "side", 1): (1000, 4096, 1, None, None),
        ("infer", "side", 2): (500, None, 1, None, UNASSIGNED),
        ("rogue", "main", 4): (700, None, 1, None, UNASSIGNED),
    }
    assert rows.unattributed_mib[5] == 300 and rows.unattributed_mib[0] == 0
    reasons = sorted((ns, e["involvedObject"]["name"], e["reason"]) for ns, e in api.events)
    assert reasons == [("team-a", "infer", "GPUMemoryOverShare"), ("team-a", "infer", "GPUNotAssigned"),
                       ("team-a", "rogue", "GPUNotAssigned")]
    over = next(e for _, e in api.events if e["reason"] == "GPUMemoryOverShare")
    assert over["type"] == "Warning" and over["involvedObject"]["uid"] == POD_UID
    assert "9,000 MiB of GPU 0" in over["message"] and "share of 8,192 MiB" in over["message"]


def test_a_pod_with_a_corrupt_or_copied_assignment_gets_no_share_and_the_rest_is_read(machine):
    pod = gpu_pod("copied", POD_UID, {"main": CID}, {"main": [(0, 8192)]})
    pod["metadata"]["uid"] = "99999999-2222-4333-8444-555555555555"  # another pod's assignment, copied
    broken = gpu_pod("broken", "77777777-2222-4333-8444-555555555555", {"main": "d" * 64}, {})
    broken["metadata"]["annotations"][ASSIGNMENT_ANNOTATION] = "{not json"
    info = pod_info(pod)
    assert info.shares == {} and "copied?" in info.problem
    machine.add(100, 0, 100, cgroup_v1(pod["metadata"]["uid"], CID))
    machine.add(101, 1, 100, cgroup_v1(broken["metadata"]["uid"], "d" * 64))
    rows = monitor_for(machine, FakeApi([pod, broken])).observe().containers
    assert {(r.pod, r.violation) for r in rows} == {("copied", UNASSIGNED), ("broken", UNASSIGNED)}


def test_an_event_per_episode_at_most_once_per_interval_for_the_same_container_gpu_and_kind(machine):
    pod = gpu_pod("infer", POD_UID, {"main": CID}, {"main": [(0, 8192)]})
    api, clock = FakeApi([pod]), Clock()
    monitor = monitor_for(machine, api, clock, event_every_s=600)
    machine.add(100, 0, 9000, cgroup_v1(POD_UID, CID))
    for _ in range(3):
        monitor.observe()
    assert len(api.events) == 1                                # flagged once while it lasts
    process = machine.gpus[0]["processes"][0]
    for used in (8000, 8500, 8000, 8500):                      # hovering about its share: episodes, no flood
        process["usedMiB"] = used
        clock.now += 10
        monitor.observe()
    assert len(api.events) == 1
    assert monitor.flags.labels(OVER_MEMORY)._value.get() == 3  # each episode still counted
    process["usedMiB"] = 8000
    clock.now = 600
    monitor.observe()
    process["usedMiB"] = 8500                                  # ten minutes on: a new event
    monitor.observe()
    assert len(api.events) == 2


def test_pods_are_listed_again_only_for_a_new_unknown_container_at_most_once_per_interval(machine):
    pod = gpu_pod("infer", POD_UID, {"main": CID}, {"main": [(0, 8192)]})
    api, clock = FakeApi([pod]), Clock()
    monitor = monitor_for(machine, api, clock, relist_s=10)
    machine.add(100, 0, 1000, cgroup_v1(POD_UID, CID))
    monitor.observe()
    monitor.observe()
    assert api.lists == 1  # nothing unknown: no list

    restarted = "e" * 64  # the container restarted: a new ID, not yet in the list the monitor has
    machine.gpus[0]["processes"].clear()
    machine.add(101, 0, 10, cgroup_v1(POD_UID, restarted))
    api.pods[0]["status"]["containerStatuses"][0]["containerID"] = f"containerd://{restarted}"
    assert monitor.observe().containers == []  # unknown, but 10 s have not passed since the list at t=0
    assert api.lists == 1
    clock.now = 10
    rows = monitor.observe().containers
    assert api.lists == 2 and [(r.pod, r.container, r.used_mib) for r in rows] == [("infer", "main", 10)]

    gone = "22222222-3333-4444-8555-666666666666"  # a deleted pod whose process the driver still holds
    machine.add(102, 1, 300, cgroup_v1(gone, "f" * 64))
    clock.now = 20
    monitor.observe()
    assert api.lists == 3  # listed once for it
    for clock.now in (30, 40, 50):
        assert monitor.observe().unattributed_mib[1] == 300
    assert api.lists == 3  # the list did not explain it: no list every interval for it


def test_the_mps_servers_pod_is_fracgpus_own_and_flagged_for_nothing(machine):
    """The MPS daemon's pod (in the agent's namespace) runs nvidia-cuda-mps-server, every MPS client's GPU
    process: its memory counts as outside any pod, not as a pod on a GPU it was not given."""
    mps_uid, mps_cid = "33333333-4444-4555-8666-777777777777", "9" * 64
    daemon = gpu_pod("fracgpu-mps-x1", mps_uid, {"mps": mps_cid}, {}, namespace="fracgpu-node")
    machine.add(100, 0, 300, cgroup_v1(mps_uid, mps_cid))
    api = FakeApi([daemon])
    rows = monitor_for(machine, api).observe()
    assert rows.containers == [] and rows.unattributed_mib[0] == 300 and api.events == []


def test_processes_in_a_runtimes_sub_cgroup_and_graphics_processes_are_attributed(machine):
    """crun (CRI-O, cgroup v2) puts a container's processes in .../crio-<id>.scope/container; a graphics (Vulkan,
    OpenGL) context holds memory as a compute one does, and a process in both lists counts once."""
    pod = gpu_pod("infer", POD_UID, {"main": CID}, {"main": [(0, 8192)]})
    sub = cgroup_v2_systemd(POD_UID, CID, "crio").replace(".scope\n", ".scope/container\n")
    assert parse_cgroup(sub) == (POD_UID, CID)
    machine.add(100, 0, 1000, sub)
    machine.gpus[0]["graphicsProcesses"] = [{"pid": 100, "usedMiB": 1200}]
    machine.gpus[1]["graphicsProcesses"] = [{"pid": 100, "usedMiB": 50}]
    rows = monitor_for(machine, FakeApi([pod])).observe().containers
    assert [(r.gpu, r.used_mib, r.violation) for r in rows] == [(0, 1200, None), (1, 50, UNASSIGNED)]


def test_a_cgroup_name_that_is_not_utf8_costs_only_that_process(machine):
    pod = gpu_pod("infer", POD_UID, {"main": CID}, {"main": [(0, 8192)]})
    machine.add(100, 0, 1000, cgroup_v1(POD_UID, CID))
    machine.add(101, 1, 70, "")
    (machine.proc / "101" / "cgroup").write_bytes(b"0::/system.slice/\xff\xfe.service\n")
    rows = monitor_for(machine, FakeApi([pod])).observe()
    assert [(r.pod, r.gpu) for r in rows.containers] == [("infer", 0)] and rows.unattributed_mib[1] == 70


def test_an_init_containers_event_names_it_and_a_share_without_uuid_is_found_by_index(machine):
    pod = gpu_pod("infer", POD_UID, {"warmup": CID}, {"warmup": [(0, 1000)]})
    pod["spec"] = {"initContainers": [{"name": "warmup"}], "containers": [{"name": "main"}]}
    record = json.loads(pod["metadata"]["annotations"][ASSIGNMENT_ANNOTATION])
    record["containers"][0]["gpus"][0]["uuid"] = None
    pod["metadata"]["annotations"][ASSIGNMENT_ANNOTATION] = json.dumps(record)
    machine.add(100, 0, 2000, cgroup_v1(POD_UID, CID))
    api = FakeApi([pod])
    (row,) = monitor_for(machine, api).observe().containers
    assert (row.share_mib, row.violation) == (1000, OVER_MEMORY)
    assert api.events[0][1]["involvedObject"]["fieldPath"] == "spec.initContainers{warmup}"


def test_the_usage_configmap_is_written_on_material_change_only(machine):
    pod = gpu_pod("infer", POD_UID, {"main": CID}, {"main": [(0, 8192)]})
    api, clock = FakeApi([pod]), Clock()
    monitor = monitor_for(machine, api, clock, memory_threshold_mib=256, publish_every_s=60)
    machine.add(100, 0, 4000, cgroup_v1(POD_UID, CID), sm=10)
    monitor.observe()
    (first,) = api.configmaps
    assert first["metadata"]["name"] == usage_configmap_name("gpu-1") == "fracgpu-usage-gpu-1"
    assert first["metadata"]["namespace"] == "fracgpu-node"
    assert first["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Node", "name": "gpu-1",
                                                     "uid": "node-uid-1"}]
    (row,) = json.loads(first["data"]["usage.json"])["containers"]
    assert (row["namespace"], row["pod"], row["container"], row["gpu"], row["used_mib"], row["share_mib"],
            row["sm_percent"], row["flag"]) == ("team-a", "infer", "main", 0, 4000, 8192, 10, None)

    process = machine.gpus[0]["processes"][0]
    process.update(usedMiB=4200, smUtil=90)  # less than the threshold; utilisation alone
    clock.now = 30
    monitor.observe()
    assert len(api.configmaps) == 1
    clock.now = 60  # a minute since the last write: the reading is refreshed
    monitor.observe()
    assert len(api.configmaps) == 2
    process["usedMiB"] = 4456  # moved by 256 MiB: written at once
    clock.now = 61
    monitor.observe()
    assert len(api.configmaps) == 3
    machine.add(101, 1, 10, cgroup_v1(POD_UID, CID))  # the container takes another GPU: written, flagged
    monitor.observe()
    assert len(api.configmaps) == 4
    assert {c["flag"] for c in json.loads(api.configmaps[-1]["data"]["usage.json"])["containers"]} == {None, UNASSIGNED}
    monitor.observe()
    assert len(api.configmaps) == 4


def test_the_metrics_are_the_last_reading(machine):
    pod = gpu_pod("infer", POD_UID, {"main": CID}, {"main": [(0, 8192)]})
    monitor = monitor_for(machine, FakeApi([pod]))
    machine.add(100, 0, 9000, cgroup_v1(POD_UID, CID), sm=40)
    machine.add(105, 2, 300, "0::/system.slice/dcgm.service\n")
    monitor.observe()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(generate_latest(monitor.registry).decode())
               for s in family.samples}
    labels = (("container", "main"), ("gpu", "0"), ("namespace", "team-a"), ("node", "gpu-1"), ("pod", "infer"),
              ("uuid", UUID[0]))
    assert samples[("fracgpu_pod_gpu_memory_used_mib", labels)] == 9000
    assert samples[("fracgpu_pod_gpu_memory_share_mib", labels)] == 8192
    assert samples[("fracgpu_pod_gpu_sm_utilization_percent", labels)] == 40
    assert samples[("fracgpu_pod_gpu_flagged", tuple(sorted(labels + (("kind", OVER_MEMORY),))))] == 1
    assert samples[("fracgpu_gpu_unattributed_memory_mib", (("gpu", "2"), ("node", "gpu-1"), ("uuid", UUID[2])))] == 300
    assert samples[("fracgpu_agent_gpu_flags_total", (("kind", OVER_MEMORY),))] == 1
    machine.gpus[0]["processes"].clear()  # the pod ended: its series go with it
    monitor.observe()
    text = generate_latest(monitor.registry).decode()
    assert 'pod="infer"' not in text


def test_without_the_api_server_the_reading_is_still_exported_and_pods_are_attributed_once_it_answers(machine):
    pod = gpu_pod("infer", POD_UID, {"main": CID}, {"main": [(0, 8192)]})
    api, clock = FakeApi([pod], fail=1), Clock()
    monitor = monitor_for(machine, api, clock, relist_s=10)
    machine.add(100, 0, 4000, cgroup_v1(POD_UID, CID))
    first = monitor.observe()
    assert first.containers == [] and first.unattributed_mib[0] == 4000  # no pods known: nobody flagged
    assert 'fracgpu_gpu_unattributed_memory_mib{gpu="0"' in generate_latest(monitor.registry).decode()
    clock.now = 10
    assert [(r.pod, r.violation) for r in monitor.observe().containers] == [("infer", None)]
    assert api.lists == 2 and api.events == []


def test_usage_print_names_each_processes_pod_and_container_without_an_api_server(machine, tmp_path, capsys):
    from extender.agent.cli import main

    machine.add(100, 2, 1234, cgroup_v2_systemd(POD_UID, CID), sm=7)
    machine.add(101, 2, 10, "0::/system.slice/sshd.service\n")
    (tmp_path / "machine.json").write_text(json.dumps(machine.machine))
    assert main(["usage", "--print", "--fake", str(tmp_path / "machine.json"), "--proc-root", str(machine.proc)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [(p["gpu"], p["pid"], p["used_mib"], p["sm_percent"], p["podUID"], p["containerID"])
            for p in printed["processes"]] == [(2, 100, 1234, 7, POD_UID, CID), (2, 101, 10, None, None, None)]
    assert printed["problems"] == [] and len(printed["gpus"]) == 8


def test_kubectl_top_skips_an_unreadable_usage_configmap_whole_and_names_it(machine):
    from kubernetes.client import V1ConfigMap, V1ObjectMeta

    from extender.kube.kubectl import top_table, usage

    pod = gpu_pod("infer", POD_UID, {"main": CID}, {"main": [(0, 8192)]})
    api = FakeApi([pod])
    machine.add(100, 0, 9000, cgroup_v1(POD_UID, CID))
    monitor_for(machine, api).observe()
    good = api.configmaps[0]["data"]
    partial = json.loads(good["usage.json"])
    partial["node"] = "gpu-2"
    partial["containers"].append({"namespace": "x"})  # after a good entry: nothing of this ConfigMap is shown
    maps = [V1ConfigMap(metadata=V1ObjectMeta(name=name), data=data) for name, data in [
        ("fracgpu-usage-gpu-1", good), ("fracgpu-usage-gpu-2", {"usage.json": json.dumps(partial)}),
        ("fracgpu-usage-gpu-3", {"usage.json": "{not json"}), ("fracgpu-usage-gpu-4", None)]]

    class Core:
        def list_namespaced_config_map(self, namespace, label_selector):
            assert (namespace, label_selector) == ("fracgpu-node", "app.kubernetes.io/component=gpu-usage")
            return type("List", (), {"items": maps})

    rows, problems = usage(Core(), "fracgpu-node", None)
    assert [(r["node"], r["pod"], r["used_mib"], r["flag"]) for r in rows] == [("gpu-1", "infer", 9000, OVER_MEMORY)]
    assert [p.split(" skipped")[0] for p in problems] == [f"ConfigMap fracgpu-node/fracgpu-usage-gpu-{i}"
                                                         for i in (2, 3, 4)]
    assert "9000/8192" in top_table(rows) and usage(Core(), "fracgpu-node", "other-team")[0] == []
