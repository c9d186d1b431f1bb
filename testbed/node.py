"""A real Kubernetes node for the end-to-end tests: kubelet v1.36.3, containerd and runc, real containers.

kubelet is built from the control plane's wrapper module (``build_control_plane.py``); containerd, runc and a
static busybox come from Debian's packages (:func:`ensure_packages` installs them, once). No registry is
reachable, so the images are written here as a docker archive from the static busybox and imported into
containerd: ``cuda-like``, whose image config sets ``NVIDIA_VISIBLE_DEVICES=all`` as every CUDA base image does,
and ``pause``, containerd's sandbox image.

The machine has no GPU. The node's GPUs are an agent fixture (``--fake``), and the RuntimeClass handler
``nvidia`` runs ``fake_nvidia_runtime.py``, a stand-in for nvidia-container-runtime: it acts on a container's
``NVIDIA_VISIBLE_DEVICES`` as the toolkit's hook does (``all``, a list of UUIDs or indexes, ``void``/``none``/
empty) and bind-mounts, for each GPU it would expose, a file ``/dev/nvidia<index>`` holding that GPU's UUID.
What a container received is then plain to read: its environment and those files. The default handler is
plain runc, which exposes nothing, as on a node where the NVIDIA runtime is not containerd's default.

Everything listens on loopback or a unix socket under the work directory, except that kubelet reports the
machine's own address as its node IP (loopback is refused); nothing is sent there. One node per machine at a
time: kubelet's device-plugin directory and the ``kubepods`` cgroups are machine-wide.

    with Node.start(cp, workdir, name="e2e-node", fixture="h100x8-nvswitch") as node:
        ...                           # pods scheduled there run; node.container_output(pod, container)
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

from .controlplane import ControlPlane, ControlPlaneError, Process, free_port

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "extender" / "agent" / "fixtures"
STAND_IN = Path(__file__).with_name("fake_nvidia_runtime.py")
# Debian's (containerd 1.6 and runc 1.1 on bookworm); the CNI plugins because containerd reports the node's
# network ready only with a network configured, although the tests' pods all use the host's network.
PACKAGES = ("containerd", "runc", "busybox-static", "containernetworking-plugins")
BRIDGE = "fracgpu-e2e0"
BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "cat", "ls", "env", "sleep", "echo", "grep", "sort", "true")
IMAGE = "fracgpu.test/cuda-like:1"
PAUSE_IMAGE = "fracgpu.test/pause:1"
RUNTIME_HANDLER = "nvidia"
KUBELET_DEVICE_PLUGINS = Path("/var/lib/kubelet")  # kubelet creates it whatever --root-dir says
CGROUP_ROOT = Path("/sys/fs/cgroup")


class NodeError(ControlPlaneError):
    """The node could not be set up; the message says what and carries the tool's own output."""


# ---------------------------------------------------------------- packages
def missing_packages() -> list[str]:
    missing = []
    for package in PACKAGES:
        probe = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
        if probe.returncode != 0 or "install ok installed" not in probe.stdout:
            missing.append(package)
    return missing


def ensure_packages(log=print) -> None:
    """Install containerd, runc and busybox-static from Debian's packages if any is missing (root only)."""
    if shutil.which("dpkg-query") is None:
        raise NodeError("dpkg-query is not on PATH: the real-node tests need a Debian-based machine")
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise NodeError(f"packages {', '.join(missing)} are missing and installing them needs root: "
                        f"apt-get install {' '.join(PACKAGES)}")
    log(f"installing {', '.join(missing)} (apt-get)...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise NodeError(f"`{' '.join(argv)}` failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")


# ---------------------------------------------------------------- images
def _tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _busybox_layer() -> bytes:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for directory, mode in (("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("proc", 0o555), ("sys", 0o555),
                            ("tmp", 0o1777)):
        info = tarfile.TarInfo(directory)
        info.type, info.mode = tarfile.DIRTYPE, mode
        members.append((info, None))
    binary = BUSYBOX.read_bytes()
    info = tarfile.TarInfo("bin/busybox")
    info.size, info.mode = len(binary), 0o755
    members.append((info, binary))
    for applet in APPLETS:
        link = tarfile.TarInfo(f"bin/{applet}")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        members.append((link, None))
    return _tar_bytes(members)


def write_images(path: Path) -> Path:
    """A docker archive holding IMAGE and PAUSE_IMAGE (one busybox layer, two configurations)."""
    layer = _busybox_layer()
    layer_id = hashlib.sha256(layer).hexdigest()
    files: list[tuple[tarfile.TarInfo, bytes | None]] = []
    info = tarfile.TarInfo(f"{layer_id}/layer.tar")
    info.size = len(layer)
    files.append((info, layer))
    manifest = []
    for tag, env in ((IMAGE, ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all",
                              "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]),
                     (PAUSE_IMAGE, ["PATH=/bin"])):
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "config": {"Env": env, "Cmd": ["sleep", "2147483647"]},
                             "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]}},
                            sort_keys=True).encode()
        config_name = f"{hashlib.sha256(config).hexdigest()}.json"
        info = tarfile.TarInfo(config_name)
        info.size = len(config)
        files.append((info, config))
        manifest.append({"Config": config_name, "RepoTags": [tag], "Layers": [f"{layer_id}/layer.tar"]})
    data = json.dumps(manifest).encode()
    info = tarfile.TarInfo("manifest.json")
    info.size = len(data)
    files.append((info, data))
    path.write_bytes(_tar_bytes(files))
    return path


# ---------------------------------------------------------------- the node
@dataclass
class Node:
    cp: ControlPlane
    workdir: Path
    name: str
    fixture: str
    processes: dict[str, Process] = field(default_factory=dict)
    created: list[Path] = field(default_factory=list)

    @classmethod
    @contextlib.contextmanager
    def start(cls, cp: ControlPlane, workdir: Path, *, name: str, fixture: str, agent_args: tuple[str, ...] = (),
              log=print) -> Iterator["Node"]:
        node = cls(cp=cp, workdir=Path(workdir), name=name, fixture=fixture)
        try:
            ensure_packages(log)
            node._start_containerd()
            node._import_images()
            node._start_kubelet()
            node._start_agent(agent_args)
            yield node
        finally:
            node.stop()

    # ---------------------------------------------------------------- containerd
    @property
    def socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    def _ctr(self, *args: str) -> str:
        proc = subprocess.run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise NodeError(f"`ctr {' '.join(args)}` failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        return proc.stdout

    def _gpus_file(self) -> Path:
        """The fixture's GPUs (index, UUID) for the stand-in runtime, what the toolkit would read through NVML,
        and a file per GPU holding its UUID."""
        machine = json.loads((FIXTURES / f"{self.fixture}.json").read_text())
        devices = self.workdir / "dev"
        devices.mkdir(exist_ok=True)
        for gpu in machine["gpus"]:  # what the stand-in mounts as /dev/nvidia<index>
            (devices / gpu["uuid"]).write_text(gpu["uuid"] + "\n")
        path = self.workdir / "gpus.json"
        path.write_text(json.dumps([{"index": i, "uuid": g["uuid"]} for i, g in enumerate(machine["gpus"])]))
        return path

    def _stand_in_runtime(self) -> Path:
        """The runc-compatible binary of the ``nvidia`` handler: the stand-in acts on ``create``, runc does
        everything. A shell wrapper so that runc's many other calls do not start Python."""
        wrapper = self.workdir / "nvidia-container-runtime"
        gpus = self._gpus_file()
        wrapper.write_text(
            "#!/bin/sh\n"
            'for arg in "$@"; do\n'
            f'  [ "$arg" = create ] && exec {sys.executable} {STAND_IN} --gpus {gpus} --devices {self.workdir}/dev'
            ' -- "$@"\n'
            "done\n"
            'exec runc "$@"\n')
        wrapper.chmod(0o755)
        return wrapper

    def _start_containerd(self) -> None:
        base = self.workdir / "containerd"
        base.mkdir(parents=True, exist_ok=True)
        if not Path("/run/containerd").exists():
            self.created.append(Path("/run/containerd"))  # the shims' sockets live there whatever `state` says
        runtime = self._stand_in_runtime()
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [{cri}.containerd]
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [{cri}.containerd.runtimes.{RUNTIME_HANDLER}]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.{RUNTIME_HANDLER}.options]
        BinaryName = "{runtime}"
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{base}/cni"
"""
        (base / "config.toml").write_text(config)
        (base / "cni").mkdir(exist_ok=True)
        (base / "cni" / "10-fracgpu-e2e.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "fracgpu-e2e",
            "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": False, "ipMasq": False,
                         "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.18.0.0/24"}]],
                                  "dataDir": str(base / "cni-ipam")}}]}))
        proc = self._spawn("containerd", ["containerd", "--config", str(base / "config.toml")])
        self.cp._wait(proc, lambda: self.socket.exists() and bool(self._ctr("version")), "containerd's socket",
                      timeout=30)

    def _import_images(self) -> None:
        archive = write_images(self.workdir / "images.tar")
        self._ctr("images", "import", str(archive))

    def _spawn(self, name: str, argv: list[str]) -> Process:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as handle:
            popen = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        proc = Process(name, popen, log)
        self.processes[name] = proc
        return proc

    # ---------------------------------------------------------------- kubelet
    @property
    def pod_logs(self) -> Path:
        return self.workdir / "pod-logs"

    def _start_kubelet(self) -> None:
        from kubernetes import client

        cp = self.cp
        kubeconfig = cp.identity(f"node-{self.name}", f"system:node:{self.name}", "system:nodes")
        client.RbacAuthorizationV1Api(cp.api_client()).create_cluster_role_binding({
            "metadata": {"name": f"e2e-node-{self.name}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": f"system:node:{self.name}"}]})
        if not KUBELET_DEVICE_PLUGINS.exists():
            self.created.append(KUBELET_DEVICE_PLUGINS)
        root = self.workdir / "kubelet"
        root.mkdir(parents=True, exist_ok=True)
        self.pod_logs.mkdir(exist_ok=True)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": "127.0.0.1", "port": free_port(), "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": free_port(),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(cp.pki / "ca.crt")}},
            "authorization": {"mode": "AlwaysAllow"},  # its server listens on loopback only
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
            "oomScoreAdj": 0,  # this host withholds CAP_SYS_RESOURCE (containerd: restrict_oom_score_adj)
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "podLogsDir": str(self.pod_logs), "serializeImagePulls": False, "maxPods": 110,
            "resolvConf": "", "registerNode": True, "nodeStatusReportFrequency": "10s",
        }
        path = self.workdir / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config))
        self.kubelet_healthz = f"http://127.0.0.1:{config['healthzPort']}/healthz"
        kubelet = cp.bin / "kubelet"
        proc = self._spawn("kubelet", [
            str(kubelet), "--config", str(path), "--kubeconfig", str(kubeconfig), "--root-dir", str(root),
            "--cert-dir", str(self.workdir / "kubelet-pki"), "--hostname-override", self.name, "-v", "1"])

        def ready() -> bool:
            node = cp.core.read_node(self.name)
            return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

        try:
            cp._wait(proc, ready, f"node {self.name} Ready", timeout=90)
        except ControlPlaneError as exc:
            with contextlib.suppress(Exception):
                conditions = [f"{c.type}={c.status} {c.reason}: {c.message}"
                              for c in cp.core.read_node(self.name).status.conditions or []]
                raise NodeError(f"node {self.name} not Ready: {conditions}\n{exc}") from None
            raise
        # No node lifecycle controller runs here: lift the not-ready taint kubelet registers the node with.
        cp.core.patch_node(self.name, {"spec": {"taints": None}})

    def _start_agent(self, args: tuple[str, ...]) -> None:
        """The node agent on a fixture machine publishes the GPUs, as the DaemonSet would on a real one."""
        from extender.core.settings import GPUS_ANNOTATION

        proc = self.cp.start_agent(self.name, "--node-name", self.name, "--fake", self.fixture, *args)
        self.processes["agent"] = self.cp.processes.pop(f"agent-{self.name}")

        def published() -> bool:
            node = self.cp.core.read_node(self.name)
            return (GPUS_ANNOTATION in (node.metadata.annotations or {})
                    and "fracgpu.io/vgpu" in (node.status.allocatable or {}))

        self.cp._wait(proc, published, f"the agent's inventory on {self.name}")

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Until containerd runs no container (kubelet has torn down every deleted pod's)."""
        deadline = time.monotonic() + timeout
        while self._ctr("tasks", "ls", "-q").strip():
            if time.monotonic() > deadline:
                raise NodeError(f"containers still running on {self.name} after {timeout:.0f} s")
            time.sleep(0.2)

    # ---------------------------------------------------------------- what the containers received
    def container_output(self, namespace: str, pod: str, uid: str, container: str) -> str | None:
        """What a container wrote to stdout, from kubelet's pod log directory (CRI log lines), or None."""
        path = self.pod_logs / f"{namespace}_{pod}_{uid}" / container / "0.log"
        try:
            raw = path.read_text()
        except OSError:
            return None
        lines = []
        for line in raw.splitlines():
            parts = line.split(" ", 3)  # <time> <stream> <P|F> <text>
            if len(parts) == 4:
                lines.append(parts[3])
        return "\n".join(lines)

    # ---------------------------------------------------------------- teardown
    def stop(self) -> None:
        """Stop the agent and kubelet, kill every container, stop containerd and its shims, unmount and remove
        what the node created (its work directory's mounts, the kubepods cgroups, /run/containerd and
        /var/lib/kubelet where they did not exist before)."""
        for name in ("agent", "kubelet"):
            proc = self.processes.pop(name, None)
            if proc is not None:
                proc.stop()
        _kill_cgroup("kubepods")
        proc = self.processes.pop("containerd", None)
        if proc is not None:
            proc.stop()
        _kill_shims(self.socket)
        _unmount_below([self.workdir, *self.created])
        _remove_cgroup("kubepods")
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)  # made only for a pod network
        for path in self.created:
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(Exception):
            self.cp.core.delete_node(self.name)


def _cgroup_dirs(name: str) -> list[Path]:
    """Every directory of cgroup ``name`` in every v1 hierarchy (and v2), deepest first."""
    found: list[Path] = []
    if not CGROUP_ROOT.is_dir():
        return found
    for hierarchy in [CGROUP_ROOT, *[p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink()]]:
        # bottom-up; a directory that goes away while we walk (its pod was just removed) is passed over
        found.extend(Path(directory) for directory, _, _ in os.walk(hierarchy / name, topdown=False))
    return found


def _kill_cgroup(name: str) -> None:
    for _ in range(50):
        pids = set()
        for directory in _cgroup_dirs(name):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _remove_cgroup(name: str) -> None:
    for directory in _cgroup_dirs(name):
        with contextlib.suppress(OSError):
            directory.rmdir()


def _kill_shims(socket: Path) -> None:
    """containerd's shims of this node (their command line names its socket), which outlive containerd."""
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc_dir / "cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(socket).encode() in argv:
                os.kill(int(proc_dir.name), signal.SIGKILL)


def _unmount_below(roots: list[Path]) -> None:
    """Lazily unmount every mount point under ``roots``, deepest first (kubelet and containerd leave many)."""
    prefixes = [str(root.resolve()) for root in roots]
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if any(point == p or point.startswith(p + "/") for p in prefixes):
            points.append(point)
    for point in sorted(set(points), key=lambda p: -p.count("/")):
        subprocess.run(["umount", "-l", point], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m testbed.node install``: what `make test` runs before the tests (idempotent)."""
    import argparse

    parser = argparse.ArgumentParser(description="the real node's Debian packages")
    parser.add_argument("command", choices=["install"])
    parser.parse_args(argv)
    try:
        ensure_packages(log=lambda m: print(m, file=sys.stderr))
    except NodeError as exc:
        print(f"real-node packages: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
