"""kube-scheduler calls the extender over HTTPS with mutual TLS, as scheduler-config/extender-https.yaml wires
it, while kubelet-style probes answer on the extender's plain probe listener."""
from __future__ import annotations

import ssl
import urllib.error
import urllib.request

import pytest
import yaml

from testbed.controlplane import ROOT, free_port

TLS_SCHEDULER = "fracgpu-tls"


def test_kube_scheduler_binds_through_the_extender_over_mutual_tls(control_plane, k8s, tls_files):
    cp = control_plane
    port, probe = free_port(), free_port()
    extender = cp.start_extender("--tls-cert", str(tls_files["cert"]), "--tls-key", str(tls_files["key"]),
                                 "--tls-client-ca", str(tls_files["ca"]), "--probe-listen", f"127.0.0.1:{probe}",
                                 name="extender-tls", port=port, ready_url=f"http://127.0.0.1:{probe}/readyz")
    config = yaml.safe_load((ROOT / "scheduler-config" / "extender-https.yaml").read_text())
    config["clientConnection"] = {"kubeconfig": str(cp.kubeconfig("scheduler"))}
    config["leaderElection"] = {"leaderElect": False}  # the session's scheduler holds the configured lease
    config["profiles"][0]["schedulerName"] = TLS_SCHEDULER
    (entry,) = config["extenders"]
    assert entry["enableHTTPS"] is True and entry["tlsConfig"]["caFile"]  # what the operator's file sets
    entry["urlPrefix"] = f"https://127.0.0.1:{port}"
    entry["tlsConfig"] = {"caFile": str(tls_files["ca"]), "certFile": str(tls_files["client-cert"]),
                          "keyFile": str(tls_files["client-key"])}
    scheduler = cp.start_scheduler(config, name="kube-scheduler-tls")
    try:
        node = k8s.node("tls", gpus=1)
        k8s.pod("over-tls", units=20, memory_mib=1000, scheduler=TLS_SCHEDULER)
        bound_to, assignment = k8s.bound("over-tls")
        assert bound_to == node and assignment["containers"][0]["gpus"][0]["units"] == 20
        without_certificate = ssl.create_default_context(cafile=str(tls_files["ca"]))
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=without_certificate, timeout=5)
        for path in ("/healthz", "/readyz"):
            with urllib.request.urlopen(f"http://127.0.0.1:{probe}{path}", timeout=5) as response:
                assert response.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{probe}/metrics", timeout=5) as response:
            # this extender, reached only over TLS by the second scheduler, made the binding
            assert 'fracgpu_extender_decisions_total{outcome="bound",verb="bind"} 1.0' in response.read().decode()
    finally:
        scheduler.stop()
        extender.stop()
        cp.processes.pop("kube-scheduler-tls", None)
        cp.processes.pop("extender-tls", None)
