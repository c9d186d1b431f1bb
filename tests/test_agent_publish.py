"""The agent's publishing: what it patches on its node, when it does not, how it waits out an absent API
server, and how it stops. A real API server is exercised in tests/e2e/test_agent_e2e.py."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from kubernetes.client.rest import ApiException

from extender.agent.fake import FakeNvml
from extender.agent.publish import Publisher, PublishSettings, describe_api_error, plan
from extender.agent.inventory import read_inventory
from extender.core.loading import build_ledger
from extender.core.settings import GPUS_ANNOTATION, CoreSettings


class FakeNodes:
    """An in-memory node store answering the agent's three calls with merge-patch semantics."""

    def __init__(self, name="gpu-1", fail=0, error=None):
        self.nodes = {name: {"metadata": {"name": name, "annotations": {"other": "kept"}},
                             "status": {"capacity": {"cpu": "64"}, "allocatable": {"cpu": "63"}}}}
        self.calls: list[str] = []
        self.fail = fail  # the next `fail` calls raise `error`
        self.error = error or ConnectionRefusedError("connection refused")

    def _call(self, what):
        self.calls.append(what)
        if self.fail:
            self.fail -= 1
            raise self.error

    def get(self, name):
        self._call("get")
        if name not in self.nodes:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.nodes[name])

    def patch(self, name, body):
        self._call("patch")
        self.nodes[name]["metadata"]["annotations"].update(body["metadata"]["annotations"])

    def patch_status(self, name, body):
        self._call("patch_status")
        for field, values in body["status"].items():
            self.nodes[name]["status"][field].update(values)

    def patches(self):
        return [c for c in self.calls if c != "get"]


def machine(fixture="h100x8-nvswitch"):
    nvml = FakeNvml.fixture(fixture)
    nvml.nvmlInit()
    return nvml


def test_first_sync_publishes_annotation_and_totals_then_nothing_while_unchanged():
    nvml, nodes = machine(), FakeNodes()
    publisher = Publisher(nvml, nodes, "gpu-1")
    assert publisher.sync()
    node = nodes.nodes["gpu-1"]
    annotation = json.loads(node["metadata"]["annotations"][GPUS_ANNOTATION])
    assert [g["uuid"] for g in annotation["gpus"]] == [g["uuid"] for g in nvml.gpus]
    assert node["metadata"]["annotations"]["other"] == "kept"
    expected = {"fracgpu.io/vgpu": "800", "fracgpu.io/vgpu-memory": str(8 * 81559)}
    for field in ("capacity", "allocatable"):
        assert {k: v for k, v in node["status"][field].items() if k.startswith("fracgpu.io/")} == expected
    assert node["status"]["capacity"]["cpu"] == "64"  # a merge patch: kubelet's resources untouched
    assert nodes.patches() == ["patch", "patch_status"]
    for _ in range(5):
        assert not publisher.sync()
    assert nodes.patches() == ["patch", "patch_status"] and nodes.calls.count("get") == 6
    # What it wrote is what the extender reads.
    ledger, load = build_ledger(CoreSettings(), [node], [])
    assert not load.warnings and len(ledger.gpu_table("gpu-1")) == 8


def test_used_memory_republishes_only_past_the_threshold():
    nvml, nodes = machine(), FakeNodes()
    publisher = Publisher(nvml, nodes, "gpu-1", PublishSettings(memory_threshold_mib=256))
    publisher.sync()
    nvml.gpus[3]["usedMiB"] += 255  # a CUDA context growing a little
    assert not publisher.sync()
    nvml.gpus[3]["usedMiB"] += 1  # 256 MiB away from what was published
    patches = publisher.sync()
    assert patches.metadata and patches.status is None  # totals did not change
    published = json.loads(nodes.nodes["gpu-1"]["metadata"]["annotations"][GPUS_ANNOTATION])
    assert published["gpus"][3]["usedMemoryMiB"] == nvml.gpus[3]["usedMiB"]


def test_a_gpu_falling_off_the_bus_is_published_at_once_and_the_extender_stops_offering_it():
    nvml, nodes = machine(), FakeNodes()
    publisher = Publisher(nvml, nodes, "gpu-1")
    publisher.sync()
    nvml.gpus[5]["lost"] = True
    patches = publisher.sync()
    assert patches.metadata and patches.status
    node = nodes.nodes["gpu-1"]
    assert node["status"]["allocatable"]["fracgpu.io/vgpu"] == "700"
    ledger, _ = build_ledger(CoreSettings(), [node], [])
    assert [g["index"] for g in ledger.gpu_table("gpu-1") if not g["healthy"]] == [5]


@pytest.mark.parametrize("edit", [
    lambda node: node["metadata"]["annotations"].__setitem__(GPUS_ANNOTATION, "{not json"),
    lambda node: node["metadata"]["annotations"].pop(GPUS_ANNOTATION),
    lambda node: node["status"]["allocatable"].pop("fracgpu.io/vgpu"),       # kubelet re-registered the node
    lambda node: node["status"]["capacity"].__setitem__("fracgpu.io/vgpu-memory", "0"),
], ids=["corrupt-annotation", "annotation-removed", "allocatable-reset", "capacity-zeroed"])
def test_what_someone_else_changed_is_written_back(edit):
    nvml, nodes = machine(), FakeNodes()
    publisher = Publisher(nvml, nodes, "gpu-1")
    publisher.sync()
    good = copy.deepcopy(nodes.nodes["gpu-1"])
    edit(nodes.nodes["gpu-1"])
    assert publisher.sync()
    assert nodes.nodes["gpu-1"] == good


def test_quantities_compare_as_quantities():
    nvml = machine("t4x4-two-sockets")
    report = read_inventory(nvml)
    node = {"metadata": {"annotations": {GPUS_ANNOTATION: report.annotation(100)}},
            "status": {"capacity": {"fracgpu.io/vgpu": "0.4k", "fracgpu.io/vgpu-memory": "61440"},
                       "allocatable": {"fracgpu.io/vgpu": "400", "fracgpu.io/vgpu-memory": "61440"}}}
    assert not plan(node, report, PublishSettings())
    node["status"]["allocatable"]["fracgpu.io/vgpu"] = "4k"
    assert plan(node, report, PublishSettings()).status is not None


def test_resource_names_and_units_follow_the_settings():
    report = read_inventory(machine("t4x4-two-sockets"))
    settings = PublishSettings(units_per_gpu=1000, vgpu_resource="example.com/vgpu", memory_resource="example.com/mem")
    patch = plan({"metadata": {}}, report, settings)
    assert patch.status["status"]["capacity"] == {"example.com/vgpu": "4000", "example.com/mem": "61440"}
    assert json.loads(patch.metadata["metadata"]["annotations"][GPUS_ANNOTATION])["unitsPerGpu"] == 1000


def test_backoff_while_the_api_server_is_away_then_back_to_the_refresh_interval():
    nodes = FakeNodes(fail=7)
    publisher = Publisher(machine(), nodes, "gpu-1", PublishSettings(interval_s=30, backoff_s=(1, 16)))
    stop, waits = threading.Event(), []

    def wait(seconds):
        waits.append(seconds)
        if len(waits) == 10:
            stop.set()

    publisher.run(stop, wait)
    assert waits == [1, 2, 4, 8, 16, 16, 16, 30, 30, 30]
    assert nodes.patches() == ["patch", "patch_status"]  # published once the server came back, then quiet


def test_a_missing_node_is_retried_with_a_message_that_says_what_is_wrong(caplog):
    nodes = FakeNodes(name="other")
    publisher = Publisher(machine(), nodes, "gpu-1", PublishSettings(backoff_s=(1, 4)), describe=describe_api_error)
    stop, waits = threading.Event(), []
    publisher.run(stop, lambda s: (waits.append(s), len(waits) == 3 and stop.set()))
    assert waits == [1, 2, 4]
    assert "gpu-1: the node does not exist (is NODE_NAME the node's name?)" in caplog.text
    assert "forbidden" in describe_api_error(ApiException(status=403, reason="Forbidden"))


@pytest.mark.parametrize("kwargs, message", [
    ({"units_per_gpu": 0}, "units per GPU"), ({"interval_s": 0}, "refresh interval"),
    ({"memory_threshold_mib": -1}, "used-memory threshold"),
])
def test_bad_settings_name_the_setting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PublishSettings(**kwargs)


def _agent(*args, env=None):
    exe = [sys.executable, "-m", "extender.agent.cli"]
    return subprocess.Popen([*exe, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def _closed_port_kubeconfig(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return path


def test_sigterm_stops_the_agent_promptly_while_it_waits_for_the_api_server(tmp_path):
    proc = _agent("run", "--node-name", "gpu-1", "--kubeconfig", str(_closed_port_kubeconfig(tmp_path)),
                  "--fake", "t4x4-two-sockets")
    try:
        deadline = time.monotonic() + 20
        lines = []
        while time.monotonic() < deadline:  # wait for the first failed attempt: it is now backing off
            lines.append(proc.stdout.readline())
            if "retrying in" in lines[-1]:
                break
        assert "cannot publish to node gpu-1" in lines[-1], "".join(lines)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 2
    finally:
        proc.kill()
        proc.wait()


def test_once_reports_a_failed_publish_and_exits_1(tmp_path):
    proc = _agent("run", "--once", "--node-name", "gpu-1", "--kubeconfig", str(_closed_port_kubeconfig(tmp_path)),
                  "--fake", "t4x4-two-sockets")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "cannot publish to node gpu-1" in out and "Traceback" not in out


@pytest.mark.parametrize("args, message", [
    (["run"], "no node name: pass --node-name or set NODE_NAME"),
    (["run", "--node-name", "n", "--interval", "0", "--kubeconfig", "x"], "refresh interval must be positive"),
    (["run", "--node-name", "n", "--kubeconfig", "/nonexistent/kubeconfig"], "/nonexistent/kubeconfig"),
])
def test_run_start_errors_are_one_clear_line(args, message):
    proc = _agent(*args, env={"NODE_NAME": ""})
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2 and message in out and "Traceback" not in out, out
