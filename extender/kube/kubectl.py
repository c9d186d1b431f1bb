"""``kubectl fracgpu``: which pod holds which GPU, read from the API server as kubectl reads it.

    kubectl fracgpu nodes [-o json]             per node and GPU: model, units and MiB used/free, pool, holders
    kubectl fracgpu pod NAMESPACE/NAME [-o json]  the pod's GPUs, or why it waits (its last FailedScheduling event)
    kubectl fracgpu top [-n NAMESPACE] [-o json]  per container and GPU: memory used against its share, SM %,
                                                 and what the agents flagged (over its share, a GPU not its own)

Installed as ``kubectl-fracgpu``, so kubectl finds it as a plugin. It lists nodes and pods and builds the same
ledger the extender builds from them (the agent's inventory annotations and the pods' assignments), so it needs
only ``get``/``list`` on nodes, pods and events, and not the extender's port. ``top`` reads the usage the node
agents publish (ConfigMaps ``fracgpu-usage-<node>`` in their namespace, ``--agent-namespace``): ``list`` on
ConfigMaps there. The kubeconfig is found as kubectl
finds it (``--kubeconfig``, then ``$KUBECONFIG``, then ``~/.kube/config``), ``--context`` picks a context. Bad
arguments and API errors end with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from ..core import CoreSettings
from ..core.inventory import parse_node
from ..core.loading import build_ledger
from ..core.settings import ASSIGNMENT_ANNOTATION, POOL_LABEL


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubectl fracgpu", description="fracgpu's GPUs, from the API server")
    parser.add_argument("--kubeconfig", help="as kubectl's (default: $KUBECONFIG, then ~/.kube/config)")
    parser.add_argument("--context", help="the kubeconfig context to use")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument("--units-per-gpu", type=int, default=100, help="the extender's (default 100)")
    parser.add_argument("--pool-label", default=POOL_LABEL, help="the extender's")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("nodes", help="per node and GPU: model, units and MiB used/free, pool, holders")
    pod = sub.add_parser("pod", help="a pod's GPUs, or why it waits")
    pod.add_argument("pod", metavar="NAMESPACE/NAME")
    top = sub.add_parser("top", help="per container and GPU: memory used and its share, SM %%, flags")
    top.add_argument("-n", "--namespace", help="only this namespace's pods")
    top.add_argument("--agent-namespace", default="fracgpu-node", help="the agents' namespace (fracgpu-node)")
    args = parser.parse_args(argv)
    try:
        settings = CoreSettings(units_per_gpu=args.units_per_gpu, pool_label=args.pool_label)
        config.load_kube_config(config_file=args.kubeconfig, context=args.context)
        core = client.CoreV1Api()
        if args.command == "nodes":
            result = nodes(core, settings)
            print(json.dumps(result, indent=2) if args.output == "json" else nodes_table(result))
        elif args.command == "top":
            rows, problems = usage(core, args.agent_namespace, args.namespace)
            for problem in problems:
                print(f"kubectl fracgpu: {problem}", file=sys.stderr)
            print(json.dumps(rows, indent=2) if args.output == "json" else top_table(rows))
        else:
            result = pod_gpus(core, args.pod)
            print(json.dumps(result, indent=2) if args.output == "json" else pod_text(result))
        return 0
    except (ValueError, config.ConfigException, OSError) as exc:
        print(f"kubectl fracgpu: {exc}", file=sys.stderr)
    except ApiException as exc:
        print(f"kubectl fracgpu: the API server answered {exc.status} {exc.reason}", file=sys.stderr)
    return 2


_SERIALIZER = client.ApiClient()  # turns the client's objects back into the API's JSON (no connection of its own)


def _plain(api_object) -> dict:
    return _SERIALIZER.sanitize_for_serialization(api_object)


def nodes(core: client.CoreV1Api, settings: CoreSettings) -> list[dict]:
    """One entry per GPU node, its GPUs as the extender's ledger holds them."""
    node_objects = [_plain(n) for n in core.list_node().items]
    pods = [_plain(p) for p in core.list_pod_for_all_namespaces().items]
    ledger, _ = build_ledger(settings, node_objects, pods)
    out = []
    for node in node_objects:
        name = node["metadata"]["name"]
        gpus = ledger.gpu_table(name)
        if not gpus:
            continue
        try:
            pool = parse_node(node, settings).pool
        except ValueError:
            pool = None
        out.append({"node": name, "pool": pool, "gpus": [
            {key: gpu[key] for key in ("index", "uuid", "model", "unitsOffered", "unitsUsed", "unitsFree",
                                       "memoryUsableMiB", "memoryChargedMiB", "memoryFreeMiB", "pool", "pods")}
            for gpu in gpus]})
    return out


def nodes_table(entries: list[dict]) -> str:
    rows = [("NODE", "POOL", "GPU", "MODEL", "UNITS USED/FREE", "MIB USED/FREE", "HOLDERS")]
    for entry in entries:
        for gpu in entry["gpus"]:
            rows.append((entry["node"], gpu["pool"] or entry["pool"] or "-", str(gpu["index"]), gpu["model"],
                         f"{gpu['unitsUsed']}/{gpu['unitsFree']}", f"{gpu['memoryChargedMiB']}/{gpu['memoryFreeMiB']}",
                         ", ".join(gpu["pods"]) or "-"))
    return _table(rows)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


_USAGE_FIELDS = {"namespace": str, "pod": str, "container": str, "gpu": int, "uuid": str, "used_mib": (int, type(None)),
                 "share_mib": (int, type(None)), "sm_percent": (int, type(None)), "processes": int,
                 "flag": (str, type(None))}


def usage(core: client.CoreV1Api, agent_namespace: str, namespace: str | None) -> tuple[list[dict], list[str]]:
    """Every container's use of every GPU, from the agents' ConfigMaps; one unreadable ConfigMap is skipped (and
    named), never the others."""
    from ..agent.monitor import USAGE_COMPONENT, USAGE_KEY

    maps = core.list_namespaced_config_map(
        agent_namespace, label_selector=f"app.kubernetes.io/component={USAGE_COMPONENT}").items
    rows, problems = [], []
    for configmap in maps:
        try:
            summary = json.loads((configmap.data or {})[USAGE_KEY])
            node, read_at = str(summary["node"]), str(summary.get("readAt", ""))
            entries = list(summary["containers"])
            if not all(isinstance(e.get(k), t) for e in entries for k, t in _USAGE_FIELDS.items()):
                raise ValueError(f"an entry lacks one of {', '.join(_USAGE_FIELDS)}")
            rows += [{"node": node, **{k: e[k] for k in _USAGE_FIELDS}, "readAt": read_at}
                     for e in entries if namespace is None or e["namespace"] == namespace]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            problems.append(f"ConfigMap {agent_namespace}/{configmap.metadata.name} skipped: not the agent's usage "
                            f"({type(exc).__name__}: {exc})")
    rows.sort(key=lambda r: (r["namespace"], r["pod"], r["container"], r["node"], r["gpu"]))
    return rows, problems


def top_table(rows: list[dict]) -> str:
    def mib(value):
        return "?" if value is None else str(value)

    table = [("NAMESPACE", "POD", "CONTAINER", "NODE", "GPU", "MIB USED/SHARE", "SM %", "FLAG")]
    for row in rows:
        table.append((row["namespace"], row["pod"], row["container"], row["node"], str(row["gpu"]),
                      f"{mib(row['used_mib'])}/{'-' if row['share_mib'] is None else row['share_mib']}",
                      "-" if row["sm_percent"] is None else str(row["sm_percent"]), row["flag"] or "-"))
    return _table(table)


def pod_gpus(core: client.CoreV1Api, target: str) -> dict:
    namespace, slash, name = target.partition("/")
    if not slash or not namespace or not name:
        raise ValueError(f"expected NAMESPACE/NAME, not {target!r}")
    pod = core.read_namespaced_pod(name, namespace)
    raw = (pod.metadata.annotations or {}).get(ASSIGNMENT_ANNOTATION)
    out: dict = {"pod": target, "node": pod.spec.node_name, "phase": pod.status.phase if pod.status else None}
    if raw and pod.spec.node_name:
        assignment = json.loads(raw)
        out["containers"] = [{"name": c["name"], "gpus": c["gpus"]} for c in assignment.get("containers", [])]
        return out
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    failed = [e for e in events if e.reason == "FailedScheduling"]
    last = max(failed, key=lambda e: (e.last_timestamp or e.event_time or e.metadata.creation_timestamp).timestamp(),
               default=None)
    out["waiting"] = last.message if last else "no FailedScheduling event yet"
    return out


def pod_text(result: dict) -> str:
    if "containers" not in result:
        return f"{result['pod']}: {result['phase'] or 'Pending'}, not placed: {result['waiting']}"
    lines = [f"{result['pod']} on {result['node']} ({result['phase']})"]
    for container in result["containers"]:
        for gpu in container["gpus"]:
            lines.append(f"  {container['name']}: GPU {gpu['index']} {gpu.get('uuid') or ''} "
                         f"{gpu['units']} units {gpu['memoryMiB']} MiB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
