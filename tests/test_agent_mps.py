"""The MPS control daemon of an MPS node (fracgpu-agent mps), against a fake NVML and a stand-in for
nvidia-cuda-mps-control that records how it was called."""

import threading

import pynvml
import pytest

from extender.agent.fake import FakeNvml
from extender.agent.mps import MpsDaemon

STAND_IN = """#!/bin/sh
echo "args=$* stdin=$(cat) pipes=$CUDA_MPS_PIPE_DIRECTORY logs=$CUDA_MPS_LOG_DIRECTORY" >> {calls}
[ -e {dead} ] && exit 1
[ "$1" = -d ] && [ -e {refuse} ] && {{ echo 'cannot start: pipe directory busy'; exit 3; }}
exit 0
"""


@pytest.fixture
def control(tmp_path, monkeypatch):
    """A stand-in nvidia-cuda-mps-control first on PATH; its calls are read from control.calls()."""
    binary = tmp_path / "bin" / "nvidia-cuda-mps-control"
    binary.parent.mkdir()
    calls, dead, refuse = tmp_path / "calls", tmp_path / "dead", tmp_path / "refuse"
    binary.write_text(STAND_IN.format(calls=calls, dead=dead, refuse=refuse))
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", f"{binary.parent}:/usr/bin:/bin")

    class Control:
        def calls(self):
            return calls.read_text().splitlines() if calls.exists() else []

        def die(self):
            dead.touch()

        def refuse_start(self):
            refuse.touch()

    return Control()


def machine(modes=(0, 0, 2, 0)):
    nvml = FakeNvml.fixture("t4x4-two-sockets")
    nvml.nvmlInit()
    for index, mode in enumerate(modes):
        nvml.nvmlDeviceSetComputeMode(index, mode)
    return nvml


def modes(nvml):
    return [nvml.nvmlDeviceGetComputeMode(i) for i in range(nvml.nvmlDeviceGetCount())]


def test_start_makes_every_gpu_exclusive_to_the_mps_server_and_stop_puts_each_back(tmp_path, control):
    nvml = machine()
    daemon = MpsDaemon(nvml, pipes=tmp_path / "mps" / "pipe", logs=tmp_path / "mps" / "log")
    daemon.start()
    assert modes(nvml) == [pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS] * 4
    assert (tmp_path / "mps" / "pipe").is_dir() and (tmp_path / "mps" / "log").is_dir()
    assert daemon.healthy()
    daemon.stop()
    assert modes(nvml) == [0, 0, 2, 0]  # as found, the prohibited one too
    where = f"pipes={tmp_path}/mps/pipe logs={tmp_path}/mps/log"
    assert control.calls() == [f"args=-d stdin= {where}", f"args= stdin=get_default_active_thread_percentage {where}",
                               f"args= stdin=quit {where}"]


def test_a_daemon_that_does_not_start_is_reported_and_changes_nothing(tmp_path, control):
    control.refuse_start()
    nvml = machine()
    daemon = MpsDaemon(nvml, pipes=tmp_path / "pipe", logs=tmp_path / "log", multiuser=True)
    with pytest.raises(RuntimeError, match=r"nvidia-cuda-mps-control -d failed \(exit 3\): cannot start: pipe"):
        daemon.start()
    assert modes(nvml) == [0, 0, 2, 0]
    assert control.calls()[0].startswith("args=-d -multiuser-server stdin=")


def test_serve_watches_the_daemon_and_exits_1_when_it_stops_answering(tmp_path, control):
    nvml = machine()
    daemon = MpsDaemon(nvml, pipes=tmp_path / "pipe", logs=tmp_path / "log")
    stop = threading.Event()
    result = {}
    thread = threading.Thread(target=lambda: result.update(status=daemon.serve(stop, interval_s=0.01)))
    thread.start()
    try:
        for _ in range(500):
            if sum("get_default_active_thread_percentage" in c for c in control.calls()) >= 3:
                break
            threading.Event().wait(0.01)
        assert modes(nvml) == [pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS] * 4
        control.die()
        thread.join(5)
        assert result == {"status": 1}  # it stopped answering: kubelet restarts the pod
    finally:
        stop.set()
        thread.join(5)
    assert modes(nvml) == [0, 0, 2, 0] and control.calls()[-1].startswith("args= stdin=quit")
