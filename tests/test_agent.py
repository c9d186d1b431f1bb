"""The node agent's NVML reading, end to end on fake machines, and what the extender then decides there."""

from __future__ import annotations

import copy
import json

import pytest

from extender.agent.cli import main as agent_main
from extender.agent.fake import FakeNvml
from extender.agent.inventory import read_inventory
from extender.core.loading import build_ledger
from extender.core.evaluation import evaluate, place
from extender.core.policies import make_policy
from extender.core.resources import parse_pod
from extender.core.settings import GPUS_ANNOTATION, CoreSettings
from extender.testing.factories import gpu_pod

S = CoreSettings()


def report(fixture):
    nvml = FakeNvml.fixture(fixture)
    nvml.nvmlInit()
    return read_inventory(nvml)


def ledger_for(fixture, name="n"):
    node = {"metadata": {"name": name, "labels": {}, "annotations": {GPUS_ANNOTATION: report(fixture).annotation(100)}}}
    ledger, load = build_ledger(S, [node], [])
    assert not load.warnings and ledger.problem(name) is None
    return ledger


def test_h100_nvswitch_board():
    r = report("h100x8-nvswitch")
    assert r.problems == [] and r.driver == "550.54.15"
    assert [g["memoryMiB"] for g in r.gpus] == [81559] * 8 and r.gpus[0]["usedMemoryMiB"] == 563
    assert [g["numaNode"] for g in r.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert all(r.links[i][j] == ("X" if i == j else "NV18") for i in range(8) for j in range(8))
    assert r.graph.number_of_edges() == 28 and {c for *_, c in r.graph.edges(data="code")} == {"NV18"}
    assert r.totals(100) == {"vgpu": 800, "vgpu-memory": 8 * 81559}


def test_t4_pcie_across_two_sockets_and_what_the_extender_picks():
    r = report("t4x4-two-sockets")
    assert r.links == [["X", "PIX", "SYS", "SYS"], ["PIX", "X", "SYS", "SYS"],
                       ["SYS", "SYS", "X", "PIX"], ["SYS", "SYS", "PIX", "X"]]
    ledger = ledger_for("t4x4-two-sockets")
    # GPU 1 is busy: a 2-GPU pod must still take a pair under one switch (2+3), never one across sockets.
    first = place(ledger, parse_pod(gpu_pod("one", units=60), S), "n", make_policy("binpack"))
    ledger.reserve(first.assignment(parse_pod(gpu_pod("one", units=60), S), "binpack"))
    pair = place(ledger, parse_pod(gpu_pod("two", units=200, gpu_count=2), S), "n", make_policy("binpack"))
    assert sorted(s.index for s in pair.containers[0].gpus) == [2, 3]


def test_faulty_machine_degrades_fields_not_the_report():
    r = report("a100x4-faults")
    healthy = {g["index"]: g["healthy"] for g in r.gpus}
    assert healthy == {0: True, 1: False, 2: False, 3: True} and r.gpus[3]["mig"] is True
    assert "GpuIsLost" in r.gpus[1]["unhealthyReason"] and "ECC" in r.gpus[2]["unhealthyReason"]
    assert "GPU 0 uncorrected ECC errors: NotSupported (Not Supported)" in r.problems
    assert all("numaNode" not in g for g in r.gpus)  # NotSupported on this driver: left out, not guessed
    assert r.links[2][3] == "NV12" and r.links[0][1] == "SYS"  # GPU 1 is lost: its link is unknown
    assert r.totals(100) == {"vgpu": 100, "vgpu-memory": 40960}  # only GPU 0 may be shared
    ledger = ledger_for("a100x4-faults")
    small = evaluate(ledger, parse_pod(gpu_pod("small", units=50), S), ["n"], make_policy("binpack"))
    assert small.fits == ["n"] and [s.index for s in small.placement("n").containers[0].gpus] == [0]
    two = evaluate(ledger, parse_pod(gpu_pod("two", units=100, gpu_count=2), S), ["n"], make_policy("binpack"))
    assert two.fits == [] and "n" in two.unresolvable  # one shareable GPU: preemption cannot help


def test_a_failing_call_on_one_gpu_only_degrades_that_field():
    machine = copy.deepcopy(FakeNvml.fixture("t4x4-two-sockets").machine)
    machine["gpus"][2]["fail"] = {"memory": "Unknown", "topology": "NotSupported"}
    nvml = FakeNvml(machine)
    nvml.nvmlInit()
    r = read_inventory(nvml)
    assert [g["healthy"] for g in r.gpus] == [True, True, False, True]
    assert r.gpus[2]["uuid"].endswith("102") and "memory unreadable" in r.gpus[2]["unhealthyReason"]
    assert r.links[0][1] == "PIX" and r.links[2][3] == "SYS"  # NotSupported topology: assume the worst link
    assert any(p.startswith("GPU 2 memory: Unknown") for p in r.problems)


def test_cli_prints_the_inventory_of_a_fixture(capsys):
    assert agent_main(["inventory", "--print", "--fake", "t4x4-two-sockets"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["nodeStatus"] == {"fracgpu.io/vgpu": 400, "fracgpu.io/vgpu-memory": 61440}
    assert out["annotation"]["version"] == 1 and len(out["annotation"]["gpus"]) == 4


@pytest.mark.parametrize("argv, message", [
    (["inventory", "--print", "--fake", "no-such-machine"], "no fixture 'no-such-machine'"),
    (["inventory", "--print"], "NVML did not start"),  # this machine has no NVIDIA driver
])
def test_cli_errors_are_one_clear_line(capsys, argv, message):
    assert agent_main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
