"""``fracgpu-extender serve``: run the scheduler extender.

Settings come from ``--config FILE`` (YAML), then ``FRACGPU_*`` environment variables, then flags; a wrong
setting stops the process at start with a message that names it (exit status 2).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from pathlib import Path


from .. import logs
from .serve import serve
from .settings import ExtenderSettings, SettingsError, load_settings
from .static import ClusterFileError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fracgpu-extender", description="fracgpu kube-scheduler extender")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve filter, prioritize, bind and preempt over HTTP(S)")
    serve.add_argument("--config", type=Path, help="YAML file of settings (keys as the flags, with _ or -)")
    serve.add_argument("--policy", help="default placement policy (a pod may choose with fracgpu.io/policy)")
    serve.add_argument("--seed", type=int, help="seed of the random policy")
    serve.add_argument("--fgd-window", type=int,
                       help="fgd policy: its target workload is the shapes of the last N GPU pods seen (1000)")
    serve.add_argument("--units-per-gpu", type=int)
    serve.add_argument("--vgpu-resource")
    serve.add_argument("--memory-resource")
    serve.add_argument("--reserve-mib", type=int, help="MiB held back on every GPU")
    serve.add_argument("--reserve-percent", type=float, help="%% of each GPU held back")
    serve.add_argument("--pools", action=argparse.BooleanOptionalAction, default=None, help="pool isolation")
    serve.add_argument("--pool-label",
                       help="the node label naming pools; a pod's pool is its own label, nodeSelector or required "
                            "node affinity on it (default fracgpu.io/pool)")
    serve.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:8888)")
    serve.add_argument("--tls-cert", type=Path)
    serve.add_argument("--tls-key", type=Path)
    serve.add_argument("--tls-client-ca", type=Path, help="require client certs (mutual TLS)")
    serve.add_argument("--cluster", type=Path, help="static mode: a v1 List of Nodes and Pods (YAML or JSON)")
    serve.add_argument("--kubeconfig", type=Path, help="live mode outside the cluster (default: in-cluster)")
    serve.add_argument("--max-body-mib", type=int)
    serve.add_argument("--probe-listen",
                       help="HOST:PORT serving /healthz, /readyz and /metrics over plain HTTP (for mutual TLS)")
    serve.add_argument("--admission-listen",
                       help="HOST:PORT serving the admission webhook (POST /admit/pods) over HTTPS")
    serve.add_argument("--admission-tls-cert", type=Path)
    serve.add_argument("--admission-tls-key", type=Path)
    serve.add_argument("--scheduler-name",
                       help="the scheduler fracgpu pods must name (admission; default fracgpu-scheduler)")
    serve.add_argument("--extender-user",
                       help="the only user admission lets write assignments (default: deploy/'s ServiceAccount)")
    serve.add_argument("--runtime-class",
                       help="the RuntimeClasses of the NVIDIA runtime, comma-separated (nvidia,nvidia-cdi,"
                            "nvidia-legacy): admission gives the first to fracgpu pods and refuses all to every "
                            "other pod (default: none)")
    serve.add_argument("--max-connections", type=int,
                       help="open connections at most; beyond, the oldest idle one is closed (default 512; the "
                            "probe and admission listeners: at most 64 each)")
    serve.add_argument("--idle-timeout-s", type=float,
                       help="close a connection that sends no complete request, or does not finish its TLS "
                            "handshake, for this long (default 120)")
    serve.add_argument("--log-level", default="INFO")
    return parser


def ssl_context(settings: ExtenderSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca is not None:
        context.load_verify_locations(settings.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(args.log_level)
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "log_level")}
    if flags.get("pools") is not None:
        flags["pools"] = bool(flags["pools"])
    try:
        settings = load_settings(config_file=args.config, flags=flags)
        context = ssl_context(settings)
        from .app import EXTENDER, create_app

        app = create_app(settings)
    except (SettingsError, ClusterFileError) as exc:
        print(f"fracgpu-extender: {exc}", file=sys.stderr)
        return 2
    except (ssl.SSLError, OSError) as exc:
        print(f"fracgpu-extender: TLS settings: {exc}", file=sys.stderr)
        return 2
    metrics = app[EXTENDER].metrics
    asyncio.run(serve(app, settings.host, settings.port, limit=settings.max_connections, ssl_context=context,
                      handshake_timeout=settings.idle_timeout_s,
                      on_refusal=lambda kind: metrics.refused_connections.labels(kind).inc()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
