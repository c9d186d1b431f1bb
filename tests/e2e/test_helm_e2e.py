"""The Helm chart installed by the real helm into a real API server of its own (empty: no deploy/ applied), then
kube-scheduler and the extender run from what the chart installed and place a fractional pod.

No kubelet runs the chart's workloads, so their processes run here, as testbed/controlplane.py runs deploy/'s:
kube-scheduler with the installed ConfigMap's configuration, the extender with the installed Deployment's args,
each with only its addresses, ports, certificate paths and kubeconfig changed; the installed webhook keeps its
rules and CA and is pointed at that extender's address. The workloads' pod templates go through the API server's
own Pod Security admission with a server-side dry run.
"""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
import yaml

from extender.core.settings import ASSIGNMENT_ANNOTATION
from extender.testing.factories import gpu_pod
from helm_helpers import helm_binary, run_helm
from testbed.controlplane import ControlPlane, free_port
from tests.e2e.conftest import started_control_plane
from testbed.render_deploy import CHART

SYSTEM, NODE = "fracgpu-system", "fracgpu-node"  # the chart's default namespaces


def wait(probe, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return value


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh control plane with the chart installed by `helm install` (defaults, the MPS daemon on, the e2e CA as
    the webhook's caBundle); yields (control plane, helm, the admin kubeconfig)."""
    helm = helm_binary()
    with started_control_plane(tmp_path_factory, "helm-control-plane", apply_deploy_rbac=False) as cp:
        kubeconfig = str(cp.kubeconfig("admin"))
        ca_bundle = base64.b64encode((cp.pki / "ca.crt").read_bytes()).decode()
        install = run_helm(helm, "install", "fracgpu", str(CHART), "--namespace", "default", "--kubeconfig",
                           kubeconfig, "--set", f"mps.enabled=true,admission.tls.caBundle={ca_bundle}")
        cp.helm_install_output = install.stdout
        # what kube-controller-manager would do: each namespace's default ServiceAccount (the MPS daemon's)
        for namespace in (SYSTEM, NODE):
            cp.core.create_namespaced_service_account(namespace, {"metadata": {"name": "default"}})
        yield cp, helm, kubeconfig


def test_helm_installed_the_chart_into_the_api_server(installed):
    from kubernetes import client

    cp, helm, kubeconfig = installed
    (release,) = json.loads(run_helm(helm, "list", "-n", "default", "--kubeconfig", kubeconfig, "-o", "json").stdout)
    assert (release["name"], release["status"]) == ("fracgpu", "deployed")
    manifest = run_helm(helm, "get", "manifest", "fracgpu", "-n", "default", "--kubeconfig", kubeconfig).stdout
    installed_objects = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(manifest) if d}
    assert {("Deployment", "fracgpu-scheduler"), ("DaemonSet", "fracgpu-agent"), ("DaemonSet", "fracgpu-mps"),
            ("MutatingWebhookConfiguration", "fracgpu-pods"), ("RuntimeClass", "nvidia")} <= installed_objects
    notes = cp.helm_install_output.partition("NOTES:")[2]  # templates/NOTES.txt, rendered
    assert "kubectl -n fracgpu-system rollout status deploy/fracgpu-scheduler" in notes
    assert "Secret fracgpu-admission-tls must exist" in notes and "caBundle" not in notes  # it was given
    labels = {ns: cp.core.read_namespace(ns).metadata.labels["pod-security.kubernetes.io/enforce"]
              for ns in (SYSTEM, NODE)}
    assert labels == {SYSTEM: "restricted", NODE: "privileged"}
    apps = client.AppsV1Api(cp.api_client())
    assert apps.read_namespaced_deployment("fracgpu-scheduler", SYSTEM).spec.replicas == 2


def test_a_wrong_value_fails_the_install_naming_it(installed):
    _, helm, kubeconfig = installed
    proc = run_helm(helm, "install", "again", str(CHART), "-n", "default", "--kubeconfig", kubeconfig,
                    "--set", "unitsPerGpu=-1", check=False)
    assert proc.returncode != 0 and "at '/unitsPerGpu': minimum: got -1" in proc.stderr, proc.stderr
    listed = json.loads(run_helm(helm, "list", "-n", "default", "--kubeconfig", kubeconfig, "-o", "json").stdout)
    assert [r["name"] for r in listed] == ["fracgpu"]


def _workload_pods(cp: ControlPlane) -> dict[str, tuple[str, dict]]:
    """Each installed workload's pod template as a Pod: name -> (namespace, body)."""
    from kubernetes import client

    apps = client.AppsV1Api(cp.api_client())
    workloads = [apps.read_namespaced_deployment("fracgpu-scheduler", SYSTEM),
                 *apps.list_namespaced_daemon_set(NODE).items]
    api = cp.api_client()
    out = {}
    for workload in workloads:
        template = api.sanitize_for_serialization(workload.spec.template)
        name = workload.metadata.name
        out[name] = (workload.metadata.namespace, {"apiVersion": "v1", "kind": "Pod",
                                                   "metadata": {"name": f"{name}-dry-run", **template["metadata"]},
                                                   "spec": template["spec"]})
    assert set(out) == {"fracgpu-scheduler", "fracgpu-agent", "fracgpu-mps"}
    return out


def test_every_workload_passes_its_namespaces_pod_security(installed):
    cp, _, _ = installed
    for name, (namespace, pod) in _workload_pods(cp).items():
        created = cp.core.create_namespaced_pod(namespace, pod, dry_run="All")  # Pod Security admission runs
        assert created.metadata.namespace == namespace, name


def test_the_agent_would_be_refused_at_restricted(installed):
    """The levels matter: the same dry run of the agent's template, with its namespace at restricted, is refused
    for hostPID (so the test above can fail)."""
    from kubernetes.client.rest import ApiException

    cp, _, _ = installed
    namespace, agent = _workload_pods(cp)["fracgpu-agent"]
    level = "pod-security.kubernetes.io/enforce"
    cp.core.patch_namespace(namespace, {"metadata": {"labels": {level: "restricted"}}})

    def refusal() -> ApiException | None:  # Pod Security reads namespaces from its informer: a moment behind
        try:
            cp.core.create_namespaced_pod(namespace, agent, dry_run="All")
        except ApiException as exc:
            return exc
        return None

    try:
        refused = wait(refusal, "Pod Security to refuse the agent at restricted", timeout=15)
    finally:
        cp.core.patch_namespace(namespace, {"metadata": {"labels": {level: "privileged"}}})
    assert refused.status == 403
    message = json.loads(refused.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message and "hostPID=true" in message, message


def _with_flags(args: list[str], changes: dict[str, str]) -> list[str]:
    """The installed args with the values of ``changes``' flags replaced (each must be there) and nothing else."""
    out, seen = [], set()
    for arg in args:
        flag, _, _ = arg.partition("=")
        if flag in changes:
            out.append(f"{flag}={changes[flag]}")
            seen.add(flag)
        else:
            out.append(arg)
    assert seen == set(changes), f"the installed args lack {set(changes) - seen}: {args}"
    return out


def test_the_scheduler_places_a_fractional_pod_through_the_installed_chart(installed):
    from kubernetes import client

    cp, _, _ = installed
    config = yaml.safe_load(cp.core.read_namespaced_config_map("fracgpu-scheduler-config", SYSTEM).data["config.yaml"])
    deployment = client.AppsV1Api(cp.api_client()).read_namespaced_deployment("fracgpu-scheduler", SYSTEM)
    (extender,) = [c for c in deployment.spec.template.spec.containers if c.name == "extender"]
    assert extender.command == ["fracgpu-extender", "serve"]

    serving = cp.ca.issue_cert("127.0.0.1")  # the webhook's certificate, from the CA the chart was given
    serving.cert_chain_pems[0].write_to_path(str(cp.pki / "helm-admission.crt"))
    serving.private_key_pem.write_to_path(str(cp.pki / "helm-admission.key"))
    port, admission_port = free_port(), free_port()
    args = _with_flags(extender.args, {
        "--listen": f"127.0.0.1:{port}", "--probe-listen": f"127.0.0.1:{free_port()}",
        "--admission-listen": f"127.0.0.1:{admission_port}",
        "--admission-tls-cert": str(cp.pki / "helm-admission.crt"),
        "--admission-tls-key": str(cp.pki / "helm-admission.key")})
    cp.start_extender(*args, port=port)  # as the chart's ServiceAccount, with its RBAC

    admission = client.AdmissionregistrationV1Api(cp.api_client())
    (webhook,) = admission.read_mutating_webhook_configuration("fracgpu-pods").webhooks
    ca_bundle = webhook.client_config.ca_bundle
    admission.patch_mutating_webhook_configuration("fracgpu-pods", {"webhooks": [{
        "name": webhook.name, "clientConfig": {"url": f"https://127.0.0.1:{admission_port}/admit/pods",
                                               "service": None, "caBundle": ca_bundle}}]})

    config["clientConnection"] = {"kubeconfig": str(cp.kubeconfig("scheduler"))}
    (extender_config,) = config["extenders"]
    assert extender_config["urlPrefix"] == "http://127.0.0.1:8888"
    extender_config["urlPrefix"] = f"http://127.0.0.1:{port}"
    cp.start_scheduler(config)  # waits for its leader Lease, which the chart's Role allows

    cp.add_gpu_node("helm-gpu-0", gpus=2, memory_mib=16_384)
    cp.core.create_namespace({"metadata": {"name": "tenant"}})
    cp.core.create_namespaced_service_account("tenant", {"metadata": {"name": "default"}})
    body = gpu_pod("infer", namespace="tenant", units=30, memory_mib=4000)
    del body["metadata"]["uid"]
    body["spec"]["schedulerName"] = config["profiles"][0]["schedulerName"]
    created = cp.core.create_namespaced_pod("tenant", body)
    assert created.spec.runtime_class_name == "nvidia"  # the installed webhook gave it the chart's RuntimeClass

    pod = wait(lambda: (p := cp.core.read_namespaced_pod("infer", "tenant")).spec.node_name and p,
                       "the pod to be bound", timeout=60)
    assert pod.spec.node_name == "helm-gpu-0"
    assignment = json.loads(pod.metadata.annotations[ASSIGNMENT_ANNOTATION])
    (container,) = assignment["containers"]
    (share,) = container["gpus"]
    assert (assignment["node"], share["units"], share["memoryMiB"]) == ("helm-gpu-0", 30, 4000)


def test_the_webhook_rendered_with_every_value_changed_compiles_in_the_api_server(installed, tmp_path):
    """The full values' webhook (other resource-name prefixes, other RuntimeClasses) is generated CEL: the API
    server compiles matchConditions when the object is created, so a server-side dry run refuses one that does not
    compile (shown with a broken copy)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from helm_helpers import FULL_VALUES, find, render, values_file

    cp, helm, _ = installed
    webhook = find(render(helm, "-f", str(values_file(tmp_path, FULL_VALUES))), "MutatingWebhookConfiguration")
    webhook["metadata"] = {"name": "fracgpu-full-values"}
    admission = client.AdmissionregistrationV1Api(cp.api_client())
    created = admission.create_mutating_webhook_configuration(webhook, dry_run="All")
    conditions = created.webhooks[0].match_conditions
    assert "gpu-runtime" in conditions[0].expression  # the full values' RuntimeClass reached the CEL
    conditions[0].expression = conditions[0].expression.replace("startsWith(", "startsWith((", 1)
    broken = {**cp.api_client().sanitize_for_serialization(created), "metadata": {"name": "fracgpu-broken"}}
    with pytest.raises(ApiException) as refused:
        admission.create_mutating_webhook_configuration(broken, dry_run="All")
    assert refused.value.status == 422 and "matchConditions" in refused.value.body
