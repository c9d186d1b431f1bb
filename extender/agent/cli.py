"""``fracgpu-agent``: read this machine's GPUs through NVML.

    fracgpu-agent inventory --print                  # the real GPUs (needs the NVIDIA driver), no API server
    fracgpu-agent inventory --print --fake t4x4-two-sockets   # a fixture machine, for demos and tests
    fracgpu-agent usage --print                      # the GPUs' processes, with their pods' UIDs (needs the host's /proc)
    fracgpu-agent run                                 # publish to $NODE_NAME and keep it current (the DaemonSet)
    fracgpu-agent run --node-name gpu-1 --kubeconfig ~/.kube/config --fake h100x8-nvswitch --once
    fracgpu-agent run --metrics-listen 0.0.0.0:9400   # also per-pod GPU usage on :9400/metrics
    fracgpu-agent mps                                 # the MPS control daemon of an MPS node (deploy/70-mps.yaml)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path

from prometheus_client import start_http_server

from .. import logs
from ..core.settings import CoreSettings
from .inventory import read_inventory
from .monitor import MonitorSettings, UsageMonitor
from .usage import read_cgroups, read_processes
from .publish import KubeNodeApi, Publisher, PublishSettings, describe_api_error


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fracgpu-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    inventory = sub.add_parser("inventory", help="read the GPUs once")
    inventory.add_argument("--print", action="store_true", dest="print_", required=True,
                           help="print the inventory as JSON (the annotation, node totals, what failed)")
    inventory.add_argument("--fake", metavar="FIXTURE", help="answer from extender/agent/fixtures/FIXTURE.json")
    inventory.add_argument("--units-per-gpu", type=int, default=CoreSettings().units_per_gpu)

    usage = sub.add_parser("usage", help="read the GPUs' processes once, with their pods' UIDs and containers' IDs")
    usage.add_argument("--print", action="store_true", dest="print_", required=True,
                       help="print them as JSON (no API server: pods by UID, containers by ID)")
    usage.add_argument("--fake", metavar="FIXTURE", help="a fixture machine: a name in fixtures/ or a .json path")
    usage.add_argument("--proc-root", default="/proc", help="where the host's processes are seen (default /proc)")

    defaults = PublishSettings()
    run = sub.add_parser("run", help="publish the inventory to this node and keep it current")
    run.add_argument("--node-name", default=os.environ.get("NODE_NAME"),
                     help="the node to publish to (default: $NODE_NAME, from the downward API)")
    run.add_argument("--kubeconfig", help="outside the cluster (default: in-cluster config)")
    run.add_argument("--fake", metavar="FIXTURE", help="a fixture machine instead of NVML (demos, tests): a name in fixtures/ or a .json path")
    run.add_argument("--units-per-gpu", type=int, default=defaults.units_per_gpu)
    run.add_argument("--vgpu-resource", default=defaults.vgpu_resource)
    run.add_argument("--memory-resource", default=defaults.memory_resource)
    run.add_argument("--interval", type=float, default=defaults.interval_s, metavar="SECONDS",
                     help=f"refresh of used memory and health (default {defaults.interval_s:g})")
    run.add_argument("--memory-threshold-mib", type=int, default=defaults.memory_threshold_mib,
                     help="republish used memory when a GPU's moved by this much "
                          f"(default {defaults.memory_threshold_mib})")
    run.add_argument("--usage-interval", type=float, default=10.0, metavar="SECONDS",
                     help="how often GPU processes are read and attributed to pods (default 10; 0: never)")
    run.add_argument("--metrics-listen", default="", metavar="HOST:PORT",
                     help="serve per-GPU and per-pod usage on http://HOST:PORT/metrics (default: not served)")
    run.add_argument("--proc-root", default="/proc",
                     help="where the host's processes are seen (default /proc: the pod needs hostPID)")
    run.add_argument("--once", action="store_true", help="publish once and exit (1 if the API call failed)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    mps = sub.add_parser("mps", help="run the MPS control daemon of this node until SIGTERM")
    mps.add_argument("--fake", metavar="FIXTURE", help="a fixture machine instead of NVML (tests)")
    mps.add_argument("--interval", type=float, default=10.0, metavar="SECONDS",
                     help="how often the daemon is asked whether it answers (default 10)")
    mps.add_argument("--multiuser-server", action="store_true",
                     help="one MPS server for clients of every Linux user (Volta and later); without it, pods "
                          "running as different users take the GPU in turns")
    mps.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def open_nvml(fake: str | None):
    """The NVML to read: pynvml, initialised, or a fixture machine. Raises ``RuntimeError`` with the reason."""
    if fake:
        from .fake import FakeNvml

        try:
            nvml = FakeNvml.fixture(fake)
        except FileNotFoundError as exc:
            raise RuntimeError(f"no fixture {fake!r}: {exc.filename}") from None
    else:
        import pynvml as nvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise RuntimeError(f"NVML did not start: {exc} (is the NVIDIA driver installed and the device "
                           "visible to this process?)") from None
    return nvml


def _open_or_say(fake: str | None):
    """:func:`open_nvml`, or None once the reason is on stderr."""
    try:
        return open_nvml(fake)
    except RuntimeError as exc:
        print(f"fracgpu-agent: {exc}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return run(args)
    if args.command == "mps":
        return mps(args)
    if args.command == "usage":
        return usage(args)
    nvml = _open_or_say(args.fake)
    if nvml is None:
        return 1
    try:
        report = read_inventory(nvml)
    finally:
        nvml.nvmlShutdown()
    print(json.dumps({
        "driver": report.driver,
        "gpus": report.gpus,
        "links": report.links,
        "problems": report.problems,
        "nodeStatus": {f"fracgpu.io/{k}": v for k, v in report.totals(args.units_per_gpu).items()},
        "annotation": json.loads(report.annotation(args.units_per_gpu)),
    }, indent=2))
    return 0


def usage(args: argparse.Namespace) -> int:
    nvml = _open_or_say(args.fake)
    if nvml is None:
        return 1
    try:
        reading = read_processes(nvml, {})
    finally:
        nvml.nvmlShutdown()
    cgroups = read_cgroups(Path(args.proc_root), (p.pid for p in reading.processes))
    processes = []
    for process in reading.processes:
        owner = cgroups.get(process.pid)
        processes.append({**asdict(process), "podUID": owner[0] if owner else None,
                          "containerID": owner[1] if owner else None})
    print(json.dumps({"gpus": reading.gpus, "processes": processes, "problems": reading.problems}, indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level)
    if not args.node_name:
        print("fracgpu-agent: no node name: pass --node-name or set NODE_NAME (the DaemonSet sets it from "
              "spec.nodeName)", file=sys.stderr)
        return 2
    try:
        settings = PublishSettings(units_per_gpu=args.units_per_gpu, vgpu_resource=args.vgpu_resource,
                                   memory_resource=args.memory_resource, interval_s=args.interval,
                                   memory_threshold_mib=args.memory_threshold_mib)
    except ValueError as exc:
        print(f"fracgpu-agent: {exc}", file=sys.stderr)
        return 2
    try:
        api = KubeNodeApi.connect(args.kubeconfig)
    except Exception as exc:  # no or bad kubeconfig, not in a cluster
        where = args.kubeconfig or "in-cluster service account"
        print(f"fracgpu-agent: cannot load the Kubernetes configuration ({where}): {exc}", file=sys.stderr)
        return 2
    nvml = _open_or_say(args.fake)
    if nvml is None:
        return 1
    publisher = Publisher(nvml, api, args.node_name, settings, describe=describe_api_error)
    monitor = None
    if args.usage_interval > 0:
        monitor = UsageMonitor(nvml, api, args.node_name, MonitorSettings(
            namespace=os.environ.get("POD_NAMESPACE", MonitorSettings.namespace), proc_root=Path(args.proc_root),
            interval_s=args.usage_interval, relist_s=args.usage_interval,
            memory_threshold_mib=args.memory_threshold_mib))
    try:
        if args.once:
            try:
                publisher.sync()
                if monitor is not None:
                    monitor.observe()
            except Exception as exc:
                print(f"fracgpu-agent: cannot publish to node {args.node_name}: {describe_api_error(exc)}",
                      file=sys.stderr)
                return 1
            return 0
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        if monitor is not None:
            if args.metrics_listen:
                host, _, port = args.metrics_listen.rpartition(":")
                start_http_server(int(port), addr=host or "0.0.0.0", registry=monitor.registry)
            usage_thread = threading.Thread(target=monitor.run, args=(stop,), name="usage", daemon=True)
            usage_thread.start()
        publisher.run(stop)
        if monitor is not None:
            # a daemon thread still writing to stderr at interpreter exit aborts the process (exit -6)
            usage_thread.join(timeout=5)
            if usage_thread.is_alive():  # stuck in an API call: neither shut NVML under it nor wait longer
                logging.getLogger("fracgpu.agent").warning("usage round still in an API call: exiting")
                logging.shutdown()
                os._exit(0)
        logging.getLogger("fracgpu.agent").info("stopped after %d patches", publisher.patches)
        return 0
    finally:
        nvml.nvmlShutdown()


def mps(args: argparse.Namespace) -> int:
    from .mps import MpsDaemon

    logs.configure(args.log_level)
    nvml = _open_or_say(args.fake)
    if nvml is None:
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        return MpsDaemon(nvml, multiuser=args.multiuser_server).serve(stop, args.interval)
    except (RuntimeError, OSError, nvml.NVMLError) as exc:
        print(f"fracgpu-agent mps: {exc}", file=sys.stderr)
        return 1
    finally:
        nvml.nvmlShutdown()


if __name__ == "__main__":
    sys.exit(main())
