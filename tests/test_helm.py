"""The Helm chart deploy/helm/fracgpu with the real helm: lint clean, renders objects valid against the Kubernetes
schemas for its defaults and a full set of values, renders what the values say, refuses wrong values naming them,
and deploy/*.yaml are its rendering byte for byte."""
from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from extender.api.cli import _parser as extender_parser
from extender.api.settings import load_settings
from extender.agent.cli import _parser as agent_parser
from extender.core.policies import POLICIES
from helm_helpers import FULL_VALUES, SWITCHES_KEPT, find, helm_binary, render, run_helm, values_file
from testbed.render_deploy import CHART, DEPLOY, deploy_files, helm_template, split_by_source

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def helm() -> Path:
    return helm_binary()


@pytest.fixture(scope="module")
def full(helm, tmp_path_factory) -> Path:
    return values_file(tmp_path_factory.mktemp("values"), FULL_VALUES)


@pytest.fixture(scope="module")
def full_objects(helm, full) -> list[dict]:
    return render(helm, "-f", str(full))


def container(objects: list[dict], kind: str, name: str, container_name: str) -> dict:
    spec = find(objects, kind, name)["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == container_name)


def extender_settings(args: list[str], tmp_path: Path):
    """The extender's own settings from its container's args (its parser and validation), with the mounted files
    that exist only in the pod replaced by files that exist here."""
    flags = vars(extender_parser().parse_args(["serve", *args]))
    for key in ("tls_cert", "tls_key", "tls_client_ca", "admission_tls_cert", "admission_tls_key"):
        if flags.get(key):
            stand_in = tmp_path / key
            stand_in.write_text("")
            flags[key] = str(stand_in)
    flags = {k: v for k, v in flags.items() if k not in ("command", "config", "log_level")}
    return load_settings(env={}, flags=flags)


# ---------------------------------------------------------------- lint and schema validation
@pytest.mark.parametrize("values", ["default", "full"])
def test_helm_lint_is_clean(helm, full, values):
    args = ["lint", "--strict", str(CHART)] + (["-f", str(full)] if values == "full" else [])
    proc = run_helm(helm, *args)
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("values", ["default", "full", "admission, agent and network policy off",
                                    "cert-manager", "server TLS only"])
def test_rendered_objects_validate_against_the_kubernetes_schemas(helm, full, values):
    args = {"default": [], "full": ["-f", str(full)],
            "admission, agent and network policy off": ["--set", "admission.enabled=false,agent.enabled=false,"
                                                                 "networkPolicy.enabled=false"],
            "cert-manager": ["--set", "admission.tls.certManagerCertificate=fracgpu-system/admission"],
            "server TLS only": ["--set", "extender.tls.enabled=true"]}[values]
    objects = render(helm, *args)
    assert len(objects) >= 5
    version = kubernetes_validate.latest_version()
    for document in objects:
        kubernetes_validate.validate(document, version, strict=True)


def test_the_full_values_set_every_value_to_something_else():
    """So that 'full' means full: a value added to values.yaml and not to FULL_VALUES fails here."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(tree, path=()):
        if isinstance(tree, dict) and tree and not path[-1:] in (("requests",), ("limits",), ("nodeSelector",),
                                                                 ("metricsScraperLabels",),
                                                                 ("metricsScraperNamespaceLabels",)):
            for key, value in tree.items():
                yield from leaves(value, (*path, key))
        else:
            yield path, tree

    default_leaves, full_leaves = dict(leaves(defaults)), dict(leaves(FULL_VALUES))
    assert set(full_leaves) == set(default_leaves)
    same = {path for path, value in default_leaves.items() if full_leaves[path] == value}
    assert same == SWITCHES_KEPT


def test_every_schema_object_is_closed_and_the_policies_are_the_extenders():
    schema = json.loads((CHART / "values.schema.json").read_text())

    def objects(node, path="#"):
        if isinstance(node, dict):
            if node.get("type") == "object":
                yield path, node
            for key, value in node.items():
                yield from objects(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from objects(value, f"{path}/{i}")

    for path, node in objects(schema):
        # a map whose keys are the user's (resources, selectors, labels) constrains its keys and values instead
        closed = node.get("additionalProperties") is False or (
            "propertyNames" in node and isinstance(node.get("additionalProperties"), dict))
        assert closed, f"{path} accepts unknown keys"
    assert schema["properties"]["policy"]["enum"] == sorted(POLICIES)


# ---------------------------------------------------------------- what the values do
def test_full_values_reach_the_extender_agent_and_scheduler(full_objects, tmp_path):
    extender = container(full_objects, "Deployment", "fracgpu-scheduler", "extender")
    assert extender["image"] == "registry.example/fracgpu:2.0.0" and extender["imagePullPolicy"] == "Always"
    settings = extender_settings(extender["args"], tmp_path)
    assert (settings.policy, settings.units_per_gpu, settings.pools, settings.pool_label) == (
        "fgd-lookahead", 10, False, "karpenter.sh/nodepool")
    assert (settings.vgpu_resource, settings.memory_resource) == ("example.com/gpu-units", "example.com/gpu-mib")
    assert (settings.reserve_mib, settings.reserve_percent, settings.fgd_window) == (1024, 2.5, 2000)
    assert settings.runtime_class == "nvidia-cdi,nvidia,gpu-runtime"
    assert (settings.scheduler_name, settings.extender_user) == (
        "gpu-scheduler", "system:serviceaccount:gpu-sched:fracgpu-scheduler")
    assert (settings.listen, settings.probe_listen, settings.admission_listen) == (
        "127.0.0.1:9888", "0.0.0.0:9889", "0.0.0.0:9443")
    assert settings.tls_cert and settings.tls_client_ca  # mutual TLS with kube-scheduler
    assert extender["livenessProbe"]["httpGet"]["port"] == "probes"
    assert {"name": "probes", "containerPort": 9889} in extender["ports"]

    agent = container(full_objects, "DaemonSet", "fracgpu-agent", "agent")
    parsed = agent_parser().parse_args(agent["command"][1:] + agent["args"])
    assert (parsed.units_per_gpu, parsed.vgpu_resource, parsed.memory_resource) == (
        settings.units_per_gpu, settings.vgpu_resource, settings.memory_resource)
    assert (parsed.interval, parsed.memory_threshold_mib, parsed.usage_interval, parsed.metrics_listen) == (
        60, 512, 5, "0.0.0.0:9500")
    agent_pod = find(full_objects, "DaemonSet", "fracgpu-agent")
    assert agent_pod["metadata"]["namespace"] == "gpu-node"
    assert agent_pod["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 1}
    agent_spec = agent_pod["spec"]["template"]["spec"]
    assert agent_spec["nodeSelector"] == {"example.com/gpu": "yes"}
    assert "runtimeClassName" not in agent_spec and "priorityClassName" not in agent_spec

    pod = find(full_objects, "Deployment", "fracgpu-scheduler")
    assert pod["spec"]["replicas"] == 3 and pod["metadata"]["namespace"] == "gpu-sched"
    spec = pod["spec"]["template"]["spec"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}] and "priorityClassName" not in spec
    assert spec["nodeSelector"] == FULL_VALUES["scheduler"]["nodeSelector"]
    assert spec["tolerations"] == FULL_VALUES["scheduler"]["tolerations"]
    scheduler = container(full_objects, "Deployment", "fracgpu-scheduler", "kube-scheduler")
    assert scheduler["image"] == "registry.example/kube-scheduler:v1.35.2" and "--v=4" in scheduler["command"]
    assert scheduler["resources"] == FULL_VALUES["scheduler"]["resources"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    assert secrets == {"admission-tls": "admission-tls", "extender-tls": "extender-tls", "extender-ca": "extender-tls",
                       "scheduler-tls": "scheduler-client-tls"}


def test_full_values_reach_the_scheduler_configuration(full_objects):
    config = yaml.safe_load(find(full_objects, "ConfigMap", "fracgpu-scheduler-config")["data"]["config.yaml"])
    assert config["profiles"] == [{"schedulerName": "gpu-scheduler"}]
    assert config["leaderElection"]["resourceNamespace"] == "gpu-sched"
    (extender,) = config["extenders"]
    assert extender["urlPrefix"] == "https://127.0.0.1:9888" and extender["enableHTTPS"] is True
    assert extender["tlsConfig"] == {"caFile": "/etc/fracgpu/extender-tls/ca.crt", "serverName": "extender.gpu-sched.svc",
                                     "certFile": "/etc/fracgpu/scheduler-tls/tls.crt",
                                     "keyFile": "/etc/fracgpu/scheduler-tls/tls.key"}
    assert (extender["weight"], extender["httpTimeout"]) == (3, "10s")
    assert [r["name"] for r in extender["managedResources"]] == ["example.com/gpu-units", "example.com/gpu-mib"]


def test_full_values_reach_admission_mps_and_network_policies(full_objects):
    webhook_configuration = find(full_objects, "MutatingWebhookConfiguration")
    (webhook,) = webhook_configuration["webhooks"]
    assert webhook["clientConfig"]["caBundle"] == "Q0EgUEVN" and webhook["timeoutSeconds"] == 10
    assert webhook["clientConfig"]["service"]["namespace"] == "gpu-sched"
    (excluded,) = webhook["namespaceSelector"]["matchExpressions"]
    assert excluded["values"] == ["gpu-sched", "gpu-node", "kube-system", "nvidia-gpu-operator", "monitoring"]
    (condition,) = webhook["matchConditions"]
    assert condition["expression"].count("k.startsWith('example.com/')") == 2
    assert "runtimeClassName == 'gpu-runtime'" in condition["expression"]
    assert "fracgpu.io/vgpu" not in condition["expression"]
    service = find(full_objects, "Service", "fracgpu-admission")
    assert service["spec"]["ports"][0]["targetPort"] == 9443

    mps = find(full_objects, "DaemonSet", "fracgpu-mps")
    (daemon,) = mps["spec"]["template"]["spec"]["containers"]
    assert daemon["args"] == ["--interval=20", "--multiuser-server"]
    assert mps["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia-cdi"
    assert mps["metadata"]["namespace"] == "gpu-node"

    for policy in (o for o in full_objects if o["kind"] == "NetworkPolicy"):
        assert [p["port"] for p in policy["spec"]["egress"][0]["ports"]] == [8443]
        assert policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {"app": "prometheus"}
    scraped = find(full_objects, "NetworkPolicy", "fracgpu-scheduler")["spec"]["ingress"][0]["ports"]
    assert {p["port"] for p in scraped} == {10259, 9889}

    kinds = {o["kind"] for o in full_objects}
    assert "Namespace" not in kinds and "RuntimeClass" not in kinds  # namespaces.create, runtimeClass.create: false
    namespaces = {o["metadata"].get("namespace") for o in full_objects}
    assert namespaces == {None, "gpu-sched", "gpu-node", "kube-system"}  # kube-system: the authentication reader


def test_switches_leave_out_what_they_gate(helm):
    objects = render(helm, "--set", "admission.enabled=false,agent.enabled=false,networkPolicy.enabled=false")
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert not {k for k in kinds if k[0] in ("MutatingWebhookConfiguration", "NetworkPolicy", "DaemonSet", "Service")}
    extender = container(objects, "Deployment", "fracgpu-scheduler", "extender")
    assert not [a for a in extender["args"] if a.startswith("--admission")] and "volumeMounts" not in extender
    cert_manager = render(helm, "--set", "admission.tls.certManagerCertificate=fracgpu-system/admission")
    annotations = find(cert_manager, "MutatingWebhookConfiguration")["metadata"]["annotations"]
    assert annotations == {"cert-manager.io/inject-ca-from": "fracgpu-system/admission"}


def test_extender_tls_is_the_https_scheduler_configuration_on_loopback(helm, tmp_path):
    objects = render(helm, "--set", "extender.tls.enabled=true")
    config = yaml.safe_load(find(objects, "ConfigMap", "fracgpu-scheduler-config")["data"]["config.yaml"])
    https = yaml.safe_load((ROOT / "scheduler-config" / "extender-https.yaml").read_text())
    # the differences: the extender is the pod's sidecar, and its Secret is mounted where the chart mounts it
    https["extenders"][0]["urlPrefix"] = "https://127.0.0.1:8888"
    https["extenders"][0]["tlsConfig"]["caFile"] = "/etc/fracgpu/extender-tls/ca.crt"
    assert config == https
    settings = extender_settings(container(objects, "Deployment", "fracgpu-scheduler", "extender")["args"], tmp_path)
    assert settings.tls_cert and settings.tls_client_ca is None


# ---------------------------------------------------------------- wrong values
@pytest.mark.parametrize("setting, named", [
    ("unitsPerGPU=10", "additional properties 'unitsPerGPU' not allowed"),
    ("agent.intervall=5", "at '/agent': additional properties 'intervall' not allowed"),
    ("unitsPerGpu=ten", "at '/unitsPerGpu': got string, want integer"),
    ("unitsPerGpu=-1", "at '/unitsPerGpu': minimum: got -1"),
    ("policy=bin-pack", "at '/policy': value must be one of"),
    ("memoryReserve.percent=100", "at '/memoryReserve/percent'"),
    ("resourceNames.vgpu=vgpu", "at '/resourceNames/vgpu'"),
    ("scheduler.image.pullPolicy=Sometimes", "at '/scheduler/image/pullPolicy'"),
    ("extender.probePort=8888", "extender.probePort: must differ from extender.port"),
    ("runtimeClass.names=[]", "runtimeClass.names: admission needs at least one"),
    ("admission.port=10259", "admission.port: 10259 is kube-scheduler's secure port"),
    ("namespaces.node=fracgpu-system", "namespaces.node: must differ from namespaces.scheduler"),
    ("extender.tls.serverName=a: b", "at '/extender/tls/serverName'"),
    # both scraper selectors emptied would admit every pod of every namespace to the metrics ports
    ("networkPolicy.metricsScraperNamespaceLabels.fracgpu\\.io/metrics-scraper=null",
     "at '/networkPolicy/metricsScraperNamespaceLabels'"),
])
def test_a_wrong_value_fails_naming_it(helm, setting, named):
    flag = "--set-json" if setting.endswith("[]") else "--set"
    proc = run_helm(helm, "template", "fracgpu", str(CHART), flag, setting, check=False)
    assert proc.returncode != 0 and named in proc.stderr, proc.stderr


def test_node_components_take_the_first_runtime_class_unless_given_their_own(helm):
    objects = render(helm, "--set-json", 'runtimeClass.names=["gpu","nvidia-cdi"]', "--set", "mps.enabled=true")
    assert find(objects, "RuntimeClass")["metadata"]["name"] == "gpu"
    for name in ("fracgpu-agent", "fracgpu-mps"):
        assert find(objects, "DaemonSet", name)["spec"]["template"]["spec"]["runtimeClassName"] == "gpu"
    own = render(helm, "--set", "agent.runtimeClassName=,agent.usageInterval=0")
    agent = find(own, "DaemonSet", "fracgpu-agent")["spec"]["template"]["spec"]
    assert "runtimeClassName" not in agent and "--usage-interval=0" in agent["containers"][0]["args"]


def test_kube_scheduler_gets_the_extenders_ca_and_not_its_key(helm):
    spec = find(render(helm, "--set", "extender.tls.enabled=true"), "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v["secret"] for v in spec["volumes"] if "secret" in v}
    (scheduler,) = [c for c in spec["containers"] if c["name"] == "kube-scheduler"]
    mounted = {m["name"] for m in scheduler["volumeMounts"]} & set(volumes)
    assert [volumes[n].get("items") for n in mounted] == [[{"key": "ca.crt", "path": "ca.crt"}]]


# ---------------------------------------------------------------- deploy/ is the chart rendered
def test_deploy_is_the_chart_rendered_byte_for_byte(helm):
    rendered = deploy_files(helm)
    on_disk = {path.name: path.read_text() for path in DEPLOY.glob("*.yaml")}
    assert set(on_disk) == set(rendered), "deploy/ and the chart's templates name different files: make deploy"
    differ = [name for name in rendered if on_disk[name] != rendered[name]]
    assert not differ, f"deploy/{', deploy/'.join(differ)} differ from the chart's rendering: run `make deploy`"


def test_deploy_differs_from_the_chart_defaults_only_by_the_mps_daemon(helm):
    defaults = split_by_source(helm_template(helm))
    with_mps = split_by_source(helm_template(helm, "--set", "mps.enabled=true"))
    assert "70-mps.yaml" not in defaults
    assert {name: objects for name, objects in with_mps.items() if name != "70-mps.yaml"} == defaults
