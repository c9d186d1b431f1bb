"""The real helm for the chart's tests (tests/test_helm.py, tests/e2e/test_helm_e2e.py), and a full set of values.

Under ``CI=true`` a helm that cannot be built fails the tests with Go's own error; elsewhere they are skipped with it.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.prerequisites import unavailable
from testbed.build_control_plane import BuildError
from testbed.build_helm import build, helm_env
from testbed.render_deploy import CHART

# Every value of values.yaml set to something else, except the switches that would hide the values they gate
# (SWITCHES_KEPT): tests/test_helm.py checks both, so a value added to the chart must be added here.
FULL_VALUES = {
    "image": {"repository": "registry.example/fracgpu", "tag": "2.0.0", "pullPolicy": "Always"},
    "imagePullSecrets": ["regcred"],
    "namespaces": {"create": False, "scheduler": "gpu-sched", "node": "gpu-node"},
    "schedulerName": "gpu-scheduler",
    "policy": "fgd-lookahead",
    "unitsPerGpu": 10,
    "resourceNames": {"vgpu": "example.com/gpu-units", "memory": "example.com/gpu-mib"},
    "pools": {"enabled": False, "label": "karpenter.sh/nodepool"},
    "memoryReserve": {"mib": 1024, "percent": 2.5},
    "runtimeClass": {"names": ["nvidia-cdi", "nvidia", "gpu-runtime"], "create": False, "handler": "nvidia-cdi"},
    "scheduler": {
        "replicas": 3,
        "image": {"repository": "registry.example/kube-scheduler", "tag": "v1.35.2", "pullPolicy": "Always"},
        "verbosity": 4,
        "extenderWeight": 3,
        "httpTimeout": "10s",
        "priorityClassName": "",
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
        "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
                         "effect": "NoSchedule"}],
    },
    "extender": {
        "port": 9888,
        "probePort": 9889,
        "extraArgs": ["--fgd-window=2000"],
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "4", "memory": "4Gi"}},
        "tls": {"enabled": True, "secretName": "extender-tls", "serverName": "extender.gpu-sched.svc",
                "clientSecretName": "scheduler-client-tls"},
    },
    "admission": {
        "enabled": True,
        "port": 9443,
        "timeoutSeconds": 10,
        "tls": {"secretName": "admission-tls", "caBundle": "Q0EgUEVN", "certManagerCertificate": ""},
        "excludedNamespaces": ["kube-system", "nvidia-gpu-operator", "monitoring"],
    },
    "agent": {
        "enabled": True,
        "interval": 60,
        "memoryThresholdMib": 512,
        "usageInterval": 5,
        "metricsPort": 9500,
        "runtimeClassName": "",
        "priorityClassName": "",
        "maxUnavailable": 1,
        "resources": {"requests": {"cpu": "20m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}},
        "nodeSelector": {"nvidia.com/gpu.present": None, "example.com/gpu": "yes"},  # helm merges maps: null removes
        "tolerations": [],
    },
    "mps": {
        "enabled": True,
        "interval": 20,
        "multiuserServer": True,
        "runtimeClassName": "nvidia-cdi",
        "priorityClassName": "",
        "resources": {"requests": {"cpu": "20m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
        "tolerations": [],
    },
    "networkPolicy": {
        "enabled": True, "apiServerPorts": [8443],
        "metricsScraperNamespaceLabels": {"fracgpu.io/metrics-scraper": None, "kubernetes.io/metadata.name": "monitoring"},
        "metricsScraperLabels": {"fracgpu.io/metrics-scraper": None, "app": "prometheus"},
    },
}
SWITCHES_KEPT = {("admission", "enabled"), ("agent", "enabled"), ("networkPolicy", "enabled"),
                 ("admission", "tls", "certManagerCertificate")}  # exclusive with caBundle; tested on its own


def helm_binary() -> Path:
    try:
        return build(log=lambda m: print(m, flush=True))
    except BuildError as exc:
        unavailable(f"cannot build helm: {exc}")


def run_helm(helm: Path, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, env=helm_env(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr}")
    return proc


def values_file(directory: Path, values: dict) -> Path:
    path = directory / "values.json"  # JSON is YAML: helm reads it as a values file
    path.write_text(json.dumps(values))
    return path


def render(helm: Path, *args: str) -> list[dict]:
    """``helm template`` of the chart with ``args``, parsed: every object it renders."""
    out = run_helm(helm, "template", "fracgpu", str(CHART), *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(objects: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"{len(matches)} {kind} {name or ''} rendered"
    return matches[0]
