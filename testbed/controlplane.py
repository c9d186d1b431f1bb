"""A real, throw-away Kubernetes control plane on loopback: etcd, kube-apiserver, kube-scheduler and the extender.

Everything listens on 127.0.0.1 on free ports, with certificates made for this run (trustme), RBAC
authorisation, and no kubelet: Nodes are API objects whose status we write. kube-scheduler and the extender
run as the ServiceAccount of ``deploy/`` (a client certificate whose user name is that account's), so they hold
exactly the permissions ``deploy/10-rbac.yaml`` grants: a missing rule shows up as a 403 in the tests.

    with ControlPlane.start(workdir) as cp:       # etcd + kube-apiserver, deploy/ RBAC applied
        cp.start_scheduler(...)                   # kube-scheduler from scheduler-config/, the extender beside it
        cp.core.create_namespaced_pod(...)
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEDULER_CONFIG = ROOT / "scheduler-config" / "extender-localhost.yaml"
DEPLOY = ROOT / "deploy"
NAMESPACE = "fracgpu-system"
SERVICE_ACCOUNT = "fracgpu-scheduler"
SA_USER = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
AGENT_USER = "system:serviceaccount:fracgpu-node:fracgpu-agent"
TENANT_USER = "e2e-tenant"  # a user the tests grant only namespaced pod permissions
RBAC_KINDS = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


class ControlPlaneError(RuntimeError):
    """A component did not start; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)


@dataclass
class ControlPlane:
    workdir: Path
    bin: Path
    api_port: int = 0
    processes: dict[str, Process] = field(default_factory=dict)
    extender_port: int = 0

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    @contextlib.contextmanager
    def start(cls, workdir: Path, bin_dir: Path, *, apply_deploy_rbac: bool = True) -> Iterator["ControlPlane"]:
        """``apply_deploy_rbac=False``: an empty API server, for what installs fracgpu itself (the Helm chart)."""
        cp = cls(workdir=Path(workdir), bin=Path(bin_dir))
        try:
            cp._certificates()
            cp._start_etcd()
            cp._start_apiserver()
            if apply_deploy_rbac:
                cp._apply_deploy_rbac()
            yield cp
        finally:
            cp.stop()

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self.processes.pop(name).stop()

    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> Process:
        log = self.workdir / f"{name}.log"
        handle = open(log, "ab")
        popen = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, env=env)
        handle.close()
        proc = Process(name, popen, log)
        self.processes[name] = proc
        return proc

    def _wait(self, proc: Process, ready, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise ControlPlaneError(f"{proc.name} exited with {proc.popen.returncode} before {what}:\n"
                                        f"{proc.tail()}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.1)
        raise ControlPlaneError(f"{proc.name}: no {what} after {timeout:.0f} s:\n{proc.tail()}")

    # ---------------------------------------------------------------- certificates and identities
    def _certificates(self) -> None:
        import trustme
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        self.ca = ca = trustme.CA(organization_name="fracgpu e2e")
        ca.cert_pem.write_to_path(str(pki / "ca.crt"))
        serving = ca.issue_cert("127.0.0.1", "localhost", "kubernetes", "kubernetes.default.svc")
        serving.cert_chain_pems[0].write_to_path(str(pki / "apiserver.crt"))
        serving.private_key_pem.write_to_path(str(pki / "apiserver.key"))
        self.pki = pki
        for who, cn, org in (("admin", "e2e-admin", "system:masters"),
                             ("scheduler", SA_USER, "system:serviceaccounts"),
                             ("agent", AGENT_USER, "system:serviceaccounts"),
                             ("tenant", TENANT_USER, "e2e-tenants")):
            self._client_certificate(who, cn, org)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (pki / "sa.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                                       serialization.NoEncryption()))
        (pki / "sa.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def _client_certificate(self, who: str, common_name: str, organization: str) -> None:
        cert = self.ca.issue_cert(f"{who}.e2e.invalid", common_name=common_name, organization_name=organization)
        cert.cert_chain_pems[0].write_to_path(str(self.pki / f"{who}.crt"))
        cert.private_key_pem.write_to_path(str(self.pki / f"{who}.key"))

    def identity(self, who: str, common_name: str, organization: str) -> Path:
        """A kubeconfig for one more client-certificate identity (a kubelet's ``system:node:<name>``, say)."""
        self._client_certificate(who, common_name, organization)
        return self.kubeconfig(who)

    def kubeconfig(self, who: str) -> Path:
        """A kubeconfig file for ``admin`` (system:masters), ``scheduler`` or ``agent`` (deploy/'s ServiceAccounts),
        or ``tenant`` (TENANT_USER: no permissions but those a test grants)."""
        path = self.workdir / f"{who}.kubeconfig"
        if not path.exists():
            doc = {
                "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
                "clusters": [{"name": "e2e", "cluster": {"server": self.server,
                                                         "certificate-authority": str(self.pki / "ca.crt")}}],
                "users": [{"name": who, "user": {"client-certificate": str(self.pki / f"{who}.crt"),
                                                 "client-key": str(self.pki / f"{who}.key")}}],
                "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": who}}],
            }
            path.write_text(yaml.safe_dump(doc))
        return path

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def api_client(self, who: str = "admin"):
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig(who)))

    @property
    def core(self):
        from kubernetes import client

        if not hasattr(self, "_core"):
            self._core = client.CoreV1Api(self.api_client("admin"))
        return self._core

    def _ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return context

    def _get(self, path: str) -> bool:
        with urllib.request.urlopen(f"{self.server}{path}", context=self._ssl(), timeout=2) as response:
            return response.status == 200

    # ---------------------------------------------------------------- etcd and kube-apiserver
    def _start_etcd(self) -> None:
        client_port, peer_port = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        proc = self._spawn("etcd", [
            str(self.bin / "etcd"), "--name", "e2e", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"e2e={peer}", "--unsafe-no-fsync", "--log-level", "warn",
        ])

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as response:
                return b'"true"' in response.read()

        self._wait(proc, healthy, "healthy etcd")

    def _start_apiserver(self) -> None:
        self.api_port = free_port()
        pki = self.pki
        proc = self._spawn("kube-apiserver", [
            str(self.bin / "kube-apiserver"),
            "--etcd-servers", self.etcd_url,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(self.api_port),
            "--tls-cert-file", str(pki / "apiserver.crt"), "--tls-private-key-file", str(pki / "apiserver.key"),
            "--client-ca-file", str(pki / "ca.crt"),
            "--authorization-mode", "RBAC",
            "--allow-privileged=true",  # as kubeadm and managed clusters run it (deploy/'s MPS daemon is privileged)
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--service-cluster-ip-range", "10.96.0.0/24",
            "--cert-dir", str(self.workdir / "apiserver-certs"),
            "--endpoint-reconciler-type", "none",
        ])
        self._wait(proc, lambda: self._get("/readyz"), "ready kube-apiserver (/readyz)", timeout=90)

    def _apply_deploy_rbac(self) -> None:
        """The namespace, ServiceAccounts and RBAC of deploy/, as an operator would apply them (the workloads
        themselves need images and kubelets; the tests run their processes here instead)."""
        from kubernetes import utils

        api = self.api_client("admin")
        for path in sorted(DEPLOY.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc["kind"] in RBAC_KINDS:
                    utils.create_from_dict(api, doc)

    # ---------------------------------------------------------------- nodes, as an agent would publish them
    def add_gpu_node(self, name: str, *, gpus: int, memory_mib: int, labels: dict | None = None,
                     cpu: str = "64", **inventory) -> None:
        """A Node object with the agent's inventory annotation and node-status totals; no kubelet behind it."""
        from extender.testing.factories import gpu_node

        body = gpu_node(name, gpus=gpus, memory_mib=memory_mib, **inventory)
        body["metadata"]["labels"].update({"kubernetes.io/hostname": name, **(labels or {})})
        self.core.create_node(body)
        capacity = {"cpu": cpu, "memory": "512Gi", "pods": "250", "fracgpu.io/vgpu": str(gpus * 100),
                    "fracgpu.io/vgpu-memory": str(gpus * memory_mib)}
        self.core.patch_node_status(name, {"status": {"capacity": capacity, "allocatable": capacity}})
        # No node lifecycle controller runs here: lift the not-ready taint the API server puts on new nodes.
        self.core.patch_node(name, {"spec": {"taints": None}})

    def extender_inspect(self) -> dict:
        url = f"http://127.0.0.1:{self.extender_port}/inspect"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    # ---------------------------------------------------------------- scheduler and extender
    def scheduler_config(self) -> dict:
        """scheduler-config/extender-localhost.yaml with only what a test run must change: ports and kubeconfig."""
        cfg = yaml.safe_load(SCHEDULER_CONFIG.read_text())
        cfg = copy.deepcopy(cfg)
        cfg["clientConnection"] = {"kubeconfig": str(self.kubeconfig("scheduler"))}
        for ext in cfg["extenders"]:
            ext["urlPrefix"] = f"http://127.0.0.1:{self.extender_port}"
        return cfg

    def start_extender(self, *args: str, name: str = "extender", port: int | None = None,
                       ready_url: str | None = None) -> Process:
        """``fracgpu-extender serve`` in live mode as deploy/'s ServiceAccount, on ``port`` (default: the one the
        scheduler configuration names); waits until ``ready_url`` (default: its plain /readyz) answers 200."""
        if port is None:
            if not self.extender_port:
                self.extender_port = free_port()
            port = self.extender_port
        exe = Path(sys.executable).with_name("fracgpu-extender")
        argv = [str(exe) if exe.exists() else shutil.which("fracgpu-extender") or "fracgpu-extender", "serve",
                "--kubeconfig", str(self.kubeconfig("scheduler")), "--listen", f"127.0.0.1:{port}", *args]
        proc = self._spawn(name, argv, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        url = ready_url or f"http://127.0.0.1:{port}/readyz"

        def ready() -> bool:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200

        self._wait(proc, ready, f"synced extender ({url})")
        return proc

    def start_agent(self, node: str, *args: str) -> Process:
        """``fracgpu-agent run`` for ``node`` as deploy/'s agent ServiceAccount (a fixture machine via --fake)."""
        exe = Path(sys.executable).with_name("fracgpu-agent")
        argv = [str(exe) if exe.exists() else shutil.which("fracgpu-agent") or "fracgpu-agent", "run",
                "--kubeconfig", str(self.kubeconfig("agent")), *args]
        return self._spawn(f"agent-{node}", argv, env=dict(os.environ, PYTHONUNBUFFERED="1", NODE_NAME=node))

    @contextlib.contextmanager
    def admission_webhook(self, namespace: str, *extender_args: str) -> Iterator[Process]:
        """An extender serving /admit/pods over TLS, as deploy/ runs it, registered with deploy/60-admission.yaml's
        webhook (its rules, matchConditions and failurePolicy: Fail) for pods of one namespace."""
        import base64

        from kubernetes import client

        serving = self.pki / "admission.crt"
        if not serving.exists():
            cert = self.ca.issue_cert("127.0.0.1")
            cert.cert_chain_pems[0].write_to_path(str(serving))
            cert.private_key_pem.write_to_path(str(self.pki / "admission.key"))
        port = free_port()
        name = f"extender-admission-{namespace}"
        extender = self.start_extender("--admission-listen", f"127.0.0.1:{port}", "--admission-tls-cert",
                                       str(serving), "--admission-tls-key", str(self.pki / "admission.key"),
                                       *extender_args, name=name, port=free_port())
        configuration = next(d for d in yaml.safe_load_all((DEPLOY / "60-admission.yaml").read_text())
                             if d["kind"] == "MutatingWebhookConfiguration")
        configuration["metadata"]["name"] = f"fracgpu-{namespace}"
        (hook,) = configuration["webhooks"]
        hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}/admit/pods",
                                "caBundle": base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()}
        hook["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
        registrations = client.AdmissionregistrationV1Api(self.api_client())
        registrations.create_mutating_webhook_configuration(configuration)
        try:
            yield extender
        finally:
            registrations.delete_mutating_webhook_configuration(f"fracgpu-{namespace}")
            extender.stop()
            self.processes.pop(name, None)

    def stop_extender(self, sig: int = signal.SIGKILL) -> None:
        proc = self.processes.pop("extender", None)
        if proc is not None:
            proc.stop(sig=sig)

    def start_scheduler(self, config: dict | None = None, name: str = "kube-scheduler") -> Process:
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config if config is not None else self.scheduler_config()))
        proc = self._spawn(name, [
            str(self.bin / "kube-scheduler"), "--config", str(path),
            "--secure-port", str(free_port()), "--bind-address", "127.0.0.1",
            "-v", "2",
        ])
        lease = (config or self.scheduler_config()).get("leaderElection", {})
        if lease.get("leaderElect", True):
            from kubernetes import client

            coordination = client.CoordinationV1Api(self.api_client("admin"))
            namespace = lease.get("resourceNamespace", "kube-system")
            lease_name = lease.get("resourceName", "kube-scheduler")

            def leading() -> bool:
                return bool(coordination.read_namespaced_lease(lease_name, namespace).spec.holder_identity)

            self._wait(proc, leading, f"leader lease {namespace}/{lease_name}")
        return proc
