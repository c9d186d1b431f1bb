"""The MPS control daemon of an MPS node: ``fracgpu-agent mps``, which ``deploy/70-mps.yaml`` runs on every node
labelled ``fracgpu.io/sharing=mps``.

At start it sets every GPU's compute mode to EXCLUSIVE_PROCESS (only the MPS server then holds a context on a
GPU, as NVIDIA recommends for MPS), creates the pipe and log directories under ``MPS_ROOT`` (the pod runs with
``MPS_SHM`` as its ``/dev/shm``; MPS pods mount both, see :mod:`extender.core.admission`) and starts
``nvidia-cuda-mps-control -d`` with ``CUDA_MPS_PIPE_DIRECTORY`` and ``CUDA_MPS_LOG_DIRECTORY``. While it runs it
asks the daemon a question every interval and exits 1 when it stops answering (kubelet restarts the pod). On
SIGTERM it sends ``quit`` and puts every GPU's compute mode back as it found it.

Each MPS client is limited by what its pod's assignment says (``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``,
``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``, :mod:`extender.core.handoff`); the daemon keeps NVIDIA's defaults.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.handoff import MPS_LOGS, MPS_PIPES

log = logging.getLogger("fracgpu.agent.mps")
CONTROL = "nvidia-cuda-mps-control"


@dataclass
class MpsDaemon:
    nvml: object
    pipes: Path = Path(MPS_PIPES)
    logs: Path = Path(MPS_LOGS)
    multiuser: bool = False  # -multiuser-server: clients of every Linux user share one server (Volta and later)
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run
    modes: dict[int, int] = field(default_factory=dict)  # GPU index -> compute mode before start

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=str(self.pipes), CUDA_MPS_LOG_DIRECTORY=str(self.logs))

    def control(self, command: str | None = None, *args: str) -> subprocess.CompletedProcess:
        """``nvidia-cuda-mps-control`` with ``args``, and ``command`` on its standard input."""
        return self.run([CONTROL, *args], input=command, env=self.env, capture_output=True, text=True, timeout=30)

    def start(self) -> None:
        nvml = self.nvml
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            self.modes[index] = nvml.nvmlDeviceGetComputeMode(handle)
            nvml.nvmlDeviceSetComputeMode(handle, nvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS)
        for directory in (self.pipes, self.logs):
            directory.mkdir(parents=True, exist_ok=True)
        started = self.control(None, "-d", *(["-multiuser-server"] if self.multiuser else []))
        if started.returncode != 0:
            self.restore()
            raise RuntimeError(f"{CONTROL} -d failed (exit {started.returncode}): "
                               f"{(started.stdout + started.stderr).strip()[-500:]}")
        log.info("MPS control daemon started on %d GPU(s), pipes in %s", len(self.modes), self.pipes)

    def healthy(self) -> bool:
        try:
            return self.control("get_default_active_thread_percentage").returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def stop(self) -> None:
        with_quit = self.control("quit")
        if with_quit.returncode != 0:
            log.warning("%s quit: exit %d %s", CONTROL, with_quit.returncode, with_quit.stderr.strip()[-300:])
        self.restore()

    def restore(self) -> None:
        """Every GPU's compute mode back as it was before start."""
        for index, mode in self.modes.items():
            try:
                self.nvml.nvmlDeviceSetComputeMode(self.nvml.nvmlDeviceGetHandleByIndex(index), mode)
            except self.nvml.NVMLError as exc:
                log.warning("GPU %d: compute mode not restored: %s", index, exc)
        self.modes.clear()

    def serve(self, stop: threading.Event, interval_s: float = 10.0) -> int:
        """Start, watch until ``stop`` is set (0) or the daemon stops answering (1), then stop."""
        self.start()
        try:
            while not stop.wait(interval_s):
                if not self.healthy():
                    log.error("the MPS control daemon does not answer; stopping so that kubelet restarts it")
                    return 1
            return 0
        finally:
            self.stop()
