"""deploy/ and scheduler-config/: valid against the Kubernetes schemas, restricted, and consistent with the
extender (its routes, its resource names, the RBAC its live mode needs)."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from extender.api.app import create_app
from extender.api.settings import ExtenderSettings, load_settings
from extender.api.static import StaticCluster

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = sorted((ROOT / "deploy").glob("*.yaml"))
SCHEDULER_CONFIGS = sorted((ROOT / "scheduler-config").glob("*.yaml"))


def documents(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_deploy_documents():
    return [d for path in DEPLOY for d in documents(path)]


@pytest.mark.parametrize("path", DEPLOY, ids=lambda p: p.name)
def test_deploy_manifests_validate_against_the_kubernetes_schemas(path):
    version = kubernetes_validate.latest_version()
    for document in documents(path):
        kubernetes_validate.validate(document, version, strict=True)


def test_validation_would_catch_a_mistake():
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "c", "imagePullPolicy": 7}]}}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def deployment():
    return next(d for d in all_deploy_documents() if d["kind"] == "Deployment")


def test_scheduler_pod_is_restricted_and_bounded():
    spec = deployment()["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert set(container["resources"]) == {"requests", "limits"}
    extender = next(c for c in spec["containers"] if c["name"] == "extender")
    assert extender["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert extender["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "--listen=127.0.0.1:8888" in extender["args"]


def test_mounted_scheduler_config_is_the_localhost_file():
    configmap = next(d for d in all_deploy_documents() if d["kind"] == "ConfigMap")
    assert yaml.safe_load(configmap["data"]["config.yaml"]) == yaml.safe_load(
        (ROOT / "scheduler-config" / "extender-localhost.yaml").read_text())


@pytest.mark.parametrize("path", SCHEDULER_CONFIGS, ids=lambda p: p.name)
def test_scheduler_configs_match_the_extender(path):
    config = yaml.safe_load(path.read_text())
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1" and config["kind"] == "KubeSchedulerConfiguration"
    assert config["profiles"] == [{"schedulerName": "fracgpu-scheduler"}]
    (extender,) = config["extenders"]
    assert extender["nodeCacheCapable"] is True and extender["ignorable"] is False
    assert isinstance(extender["weight"], int) and extender["weight"] > 0 and extender["httpTimeout"].endswith("s")
    defaults = ExtenderSettings()
    assert {r["name"]: r["ignoredByScheduler"] for r in extender["managedResources"]} == {
        defaults.vgpu_resource: False, defaults.memory_resource: False}  # node totals: see scheduler-config/README
    routes = {r.resource.canonical for r in create_app(load_settings(env={}), source=StaticCluster([], [])).router.routes()
              if r.method == "POST"}
    for verb in ("filterVerb", "prioritizeVerb", "preemptVerb", "bindVerb"):
        assert f"/{extender[verb]}" in routes
    assert extender["enableHTTPS"] is extender["urlPrefix"].startswith("https://")
    if extender["enableHTTPS"]:
        assert extender["tlsConfig"]["caFile"]


def test_extender_role_is_exactly_what_live_mode_calls():
    role = next(d for d in all_deploy_documents() if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "fracgpu-extender")
    granted = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    # live.py: list_node/watch, list_pod_for_all_namespaces/watch, read_namespaced_pod, create_namespaced_binding
    assert granted == {("nodes", "get"), ("nodes", "list"), ("nodes", "watch"), ("pods", "get"), ("pods", "list"),
                       ("pods", "watch"), ("pods/binding", "create")}


def test_agent_daemonset_is_restricted_and_names_its_node_from_the_downward_api():
    daemonset = next(d for d in all_deploy_documents() if d["kind"] == "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "fracgpu-agent"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (agent,) = spec["containers"]
    context = agent["securityContext"]
    assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]} and "privileged" not in context
    assert set(agent["resources"]) == {"requests", "limits"}
    assert agent["command"] == ["fracgpu-agent", "run"]
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    from extender.agent.cli import _parser

    args = _parser().parse_args(agent["command"][1:] + agent["args"])  # the flags it is given exist
    assert args.interval > 0


def test_agent_role_is_exactly_what_the_agent_calls():
    role = next(d for d in all_deploy_documents() if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "fracgpu-agent")
    granted = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    # publish.KubeNodeApi: read_node, patch_node, patch_node_status, list_pod_for_all_namespaces (its node's),
    # create_namespaced_event
    assert granted == {("nodes", "get"), ("nodes", "patch"), ("nodes/status", "patch"), ("pods", "list"),
                       ("events", "create")}
    role = next(d for d in all_deploy_documents() if d["kind"] == "Role" and d["metadata"]["name"] == "fracgpu-agent")
    # monitor: the usage ConfigMap by server-side apply, in the agent's own namespace
    assert role["metadata"]["namespace"] == "fracgpu-node"
    assert {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]} == {
        ("configmaps", "create"), ("configmaps", "patch"), ("configmaps", "delete")}  # delete: see the Role
    binding = next(d for d in all_deploy_documents()
                   if d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"] == "fracgpu-agent")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "fracgpu-agent", "namespace": "fracgpu-node"}]


def test_mps_daemonset_serves_exactly_the_nodes_and_paths_admission_sends_mps_pods_to():
    from extender.agent.cli import _parser
    from extender.core.admission import MPS_TOLERATION, MPS_VOLUMES
    from extender.core.handoff import MPS_ROOT

    daemonset = next(d for d in all_deploy_documents() if d["metadata"]["name"] == "fracgpu-mps")
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"fracgpu.io/sharing": "mps"} and MPS_TOLERATION in spec["tolerations"]
    (daemon,) = spec["containers"]
    assert _parser().parse_args(daemon["command"][1:] + daemon["args"]).command == "mps"
    hosts = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    mounts = {m["mountPath"]: hosts[m["name"]] for m in daemon["volumeMounts"]}
    assert mounts == {MPS_ROOT: MPS_ROOT, "/dev/shm": MPS_VOLUMES["fracgpu-mps-shm"][0]}  # the clients' /dev/shm
    assert MPS_VOLUMES["fracgpu-mps-pipe"][0].startswith(MPS_ROOT + "/")


def test_metrics_are_reachable_only_from_namespaces_a_tenant_cannot_label():
    """The agent's /metrics names every GPU pod of its node. A NetworkPolicy peer with an empty namespaceSelector
    would admit any pod a tenant labels; each peer must name namespace labels (which need the namespace's update
    permission, an administrator's)."""
    policies = [d for d in all_deploy_documents() if d["kind"] == "NetworkPolicy"]
    assert {p["metadata"]["name"] for p in policies} == {"fracgpu-scheduler", "fracgpu-agent"}
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                assert peer["namespaceSelector"].get("matchLabels"), (policy["metadata"]["name"], peer)
