"""The extender's settings: defaults < config file < environment (FRACGPU_*) < command-line flags.

Every setting is validated at start; a wrong one stops the process with a message that names it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..core import CoreSettings
from ..core.policies import POLICIES
from ..core.settings import POOL_LABEL


SIDE_MAX_CONNECTIONS = 64  # the probe and the admission listener, each (at most max_connections)


class SettingsError(ValueError):
    pass


class ExtenderSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: str = "binpack"
    seed: int = 0
    units_per_gpu: int = Field(default=100, ge=1)
    vgpu_resource: str = "fracgpu.io/vgpu"
    memory_resource: str = "fracgpu.io/vgpu-memory"
    reserve_mib: int = Field(default=0, ge=0)
    reserve_percent: float = Field(default=0.0, ge=0.0, lt=100.0)
    pools: bool = True
    listen: str = "127.0.0.1:8888"
    # plain HTTP for /healthz, /readyz and /metrics only, beside a TLS listener whose probes (kubelet's, a
    # Prometheus scrape) cannot present a client certificate
    probe_listen: str | None = None
    # HTTPS for POST /admit/pods only, where the API server calls the webhook (a Service); needs its own certificate
    admission_listen: str | None = None
    admission_tls_cert: Path | None = None
    admission_tls_key: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    cluster: Path | None = None
    kubeconfig: Path | None = None
    max_body_mib: int = Field(default=64, ge=1)
    # a connection that sends no complete request for this long is closed, idle, half-way through its headers or
    # in its TLS handshake (a late body is a 400): above the 90 s after which kube-scheduler's Go client drops
    # idle connections itself
    idle_timeout_s: float = Field(default=120.0, gt=0)
    # open connections at most: below the usual file limit of 1024, far above kube-scheduler's few; the probe
    # and admission listeners have at most SIDE_MAX_CONNECTIONS each (side_max_connections)
    max_connections: int = Field(default=512, ge=1)
    pod_cache_seconds: float = Field(default=600.0, gt=0)
    # admission (POST /admit/pods): the pods' scheduler, and the one user who may write assignments (the
    # extender's own ServiceAccount in deploy/)
    scheduler_name: str = "fracgpu-scheduler"
    extender_user: str = "system:serviceaccount:fracgpu-system:fracgpu-scheduler"
    # the RuntimeClasses of the NVIDIA container runtime, comma-separated, where it is not the nodes' default: the
    # first given to fracgpu pods, all refused to other pods ("": none, pods run with the node's default runtime)
    runtime_class: str = ""
    fgd_window: int = Field(default=1000, ge=1)  # FGD's target workload: the shapes of the last N GPU pods seen
    # the label naming pools on nodes (and on pods, or in their nodeSelector or required node affinity): a
    # cluster's own, e.g. node.kubernetes.io/gpu-pool, karpenter.sh/nodepool, eks.amazonaws.com/nodegroup
    pool_label: str = POOL_LABEL

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in POLICIES:
            raise ValueError(f"unknown policy {value!r}; known: {', '.join(sorted(POLICIES))}")
        return value

    @field_validator("listen", "probe_listen", "admission_listen")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"must be HOST:PORT with a port in 1..65535, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ExtenderSettings":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if (self.admission_listen is None) != (self.admission_tls_cert is None) or \
                (self.admission_tls_cert is None) != (self.admission_tls_key is None):
            raise ValueError("admission_listen, admission_tls_cert and admission_tls_key must be given together "
                             "(the API server calls webhooks over HTTPS only)")
        if self.probe_listen is not None and self.probe_listen == self.listen:
            raise ValueError("probe_listen must be another address than listen")
        if self.cluster is not None and self.kubeconfig is not None:
            raise ValueError("cluster (static mode) and kubeconfig (live mode) exclude each other")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "cluster", "kubeconfig", "admission_tls_cert",
                     "admission_tls_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: file {path} does not exist")
        self.core()  # resource names and reserve, checked by the core's own rules
        return self

    def core(self) -> CoreSettings:
        return CoreSettings(
            units_per_gpu=self.units_per_gpu, vgpu_resource=self.vgpu_resource, memory_resource=self.memory_resource,
            reserve_mib=self.reserve_mib, reserve_percent=self.reserve_percent, pools_enabled=self.pools,
            pool_label=self.pool_label,
        )

    @property
    def side_max_connections(self) -> int:
        """The connection limit of the probe and of the admission listener, each: their few clients (kubelet's
        probes, a scrape, the API servers) need few, and all three listeners stay under a file limit of 1024."""
        return min(self.max_connections, SIDE_MAX_CONNECTIONS)

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


ENV_PREFIX = "FRACGPU_"


def load_settings(*, config_file: Path | None = None, env: Mapping[str, str] | None = None,
                  flags: Mapping[str, Any] | None = None) -> ExtenderSettings:
    """Merge the sources (later wins) and validate. Raises :class:`SettingsError` naming the setting."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        except OSError as exc:
            raise SettingsError(f"config file {config_file}: cannot read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise SettingsError(f"config file {config_file}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise SettingsError(f"config file {config_file}: must be a mapping of setting: value")
        values.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
    fields = ExtenderSettings.model_fields
    for key, value in (env if env is not None else os.environ).items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX):].lower()
            if name in fields:
                values[name] = value
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    try:
        return ExtenderSettings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "settings"
            problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
        raise SettingsError("invalid setting: " + "; ".join(problems)) from None
    except ValueError as exc:  # CoreSettings' own checks
        raise SettingsError(str(exc)) from None
