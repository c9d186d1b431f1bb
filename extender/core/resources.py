"""Read a pod (the Kubernetes JSON shape, as a plain dict) into the GPU request fracgpu places.

Rules (docs/design.md, "Resource model"):

* ``vgpu`` (units, total for the container). ``<= unitsPerGpu`` is a share of one GPU; larger must be a
  multiple of ``unitsPerGpu`` and means that many whole GPUs.
* ``vgpu-memory`` (MiB, total for the container), split evenly over its GPUs (rounded up). Absent: each GPU
  is charged the share of its usable memory that matches the units (50 of 100 units -> half the memory), so
  memory is always accounted.
* annotation ``fracgpu.io/gpu-count: N`` spreads each GPU container over N distinct GPUs: vgpu/N units each.
* annotation ``fracgpu.io/gpu-model: "A100|H100"`` restricts the GPU models; label ``fracgpu.io/pool`` the pool.
* annotation ``fracgpu.io/sharing``: ``time-slicing`` (the default) or ``mps``.
* Init containers follow the Kubernetes effective-request rule. Containers that run at the same time form a
  *phase*: each regular init container with the sidecars (``restartPolicy: Always``) declared before it, and
  finally all sidecars with the app containers. A pod is charged, per GPU and per resource, the maximum over
  its phases (:func:`phases_of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

from .errors import InvalidRequest
from .limits import MAX_GPU_CONTAINERS_PER_POD, MAX_GPUS_PER_NODE
from .quantity import parse_integer_quantity, whole_number
from .settings import (
    GPU_COUNT_ANNOTATION,
    GPU_MODEL_ANNOTATION,
    POLICY_ANNOTATION,
    SHARING_ANNOTATION,
    SHARING_MODES,
    TIME_SLICING,
    CoreSettings,
)

ContainerKind = Literal["init", "sidecar", "app"]


@dataclass(frozen=True, slots=True)
class ContainerNeed:
    """What one container needs: ``count`` distinct GPUs, each with ``units`` and ``memory_mib``.

    ``memory_mib is None`` means "the proportional share": floor(units * usable memory of the GPU / unitsPerGpu).
    Rounded down so that shares whose units fit a GPU also fit its memory (ceil let 50+30+10+10 units of a
    16,384 MiB GPU add up to 16,386 MiB).
    """

    name: str
    kind: ContainerKind
    units: int
    count: int
    memory_mib: int | None

    def describe(self) -> str:
        memory = f"{self.memory_mib} MiB" if self.memory_mib is not None else "a proportional share of memory"
        return f"{self.count} GPU(s) with {self.units} units and {memory} each"


@dataclass(frozen=True, slots=True)
class PodRequest:
    """A pod's GPU request. ``containers`` holds only containers that ask for GPUs, in declaration order."""

    uid: str
    namespace: str
    name: str
    pool: str | None
    models: tuple[str, ...] | None
    containers: tuple[ContainerNeed, ...]
    phases: tuple[tuple[int, ...], ...]
    policy: str | None = None
    sharing: str = TIME_SLICING  # or MPS
    # Host requests, checked only on nodes whose inventory carries host capacity (the simulator's).
    cpu_milli: int = 0
    memory_mib: int = 0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def wants_gpu(self) -> bool:
        return bool(self.containers)

    @property
    def wants_host(self) -> bool:
        return self.cpu_milli > 0 or self.memory_mib > 0

    @property
    def single(self) -> ContainerNeed | None:
        """The one GPU container when there is exactly one: the fast, vectorised placement path."""
        return self.containers[0] if len(self.containers) == 1 else None


def phases_of(kinds: tuple[ContainerKind, ...]) -> tuple[tuple[int, ...], ...]:
    """Group container positions into the phases that run at the same time (see module docstring).

    >>> phases_of(("init", "sidecar", "init", "app"))
    ((0,), (1, 2), (1, 3))
    """
    phases: list[tuple[int, ...]] = []
    sidecars: list[int] = []
    apps: list[int] = []
    for position, kind in enumerate(kinds):
        if kind == "init":
            phases.append((*sidecars, position))
        elif kind == "sidecar":
            sidecars.append(position)
        else:
            apps.append(position)
    final = (*sidecars, *apps)
    if final:
        phases.append(final)
    return tuple(phases)


def model_matches(allowed: tuple[str, ...] | None, model: str) -> bool:
    """Does a GPU's model name satisfy ``fracgpu.io/gpu-model``?

    An entry matches when it equals the model name or one of its words, ignoring case, so ``H100`` matches
    ``NVIDIA H100 80GB HBM3`` and ``NVIDIA-H100-80GB-HBM3`` while ``V100M16`` does not match ``V100M32``.
    """
    if allowed is None:
        return True
    lowered = model.lower()
    words = set(lowered.replace("-", " ").replace("_", " ").split())
    return any(entry == lowered or entry in words for entry in (a.lower() for a in allowed))


def parse_pod(pod: Mapping, settings: CoreSettings) -> PodRequest:
    """Parse a pod dict. Raises :class:`InvalidRequest` naming the field and the rule when it is wrong."""
    if not isinstance(pod, Mapping):
        raise InvalidRequest("pod", f"must be a JSON object, got {type(pod).__name__}")
    metadata = _mapping(pod.get("metadata"), "metadata", None)
    namespace = _string(metadata.get("namespace"), "metadata.namespace", None) or "default"
    name = _string(metadata.get("name"), "metadata.name", None) or _string(
        metadata.get("generateName"), "metadata.generateName", None
    )
    if not name:
        raise InvalidRequest("metadata.name", "a pod needs a name")
    who = f"{namespace}/{name}"
    uid = _string(metadata.get("uid"), "metadata.uid", who)
    labels = _mapping(metadata.get("labels"), "metadata.labels", who)
    annotations = _mapping(metadata.get("annotations"), "metadata.annotations", who)
    spec = _mapping(pod.get("spec"), "spec", who)

    count = _gpu_count(annotations, who)
    containers: list[ContainerNeed] = []
    kinds: list[ContainerKind] = []
    for field, default_kind in (("initContainers", "init"), ("containers", "app")):
        entries = spec.get(field) or []
        if not isinstance(entries, list):
            raise InvalidRequest(f"spec.{field}", f"must be a list, got {type(entries).__name__}", pod=who)
        for position, container in enumerate(entries):
            path = f"spec.{field}[{position}]"
            if not isinstance(container, Mapping):
                raise InvalidRequest(path, "must be an object", pod=who)
            kind: ContainerKind = default_kind
            if default_kind == "init" and container.get("restartPolicy") == "Always":
                kind = "sidecar"
            need = _container_need(container, kind, path, count, settings, who)
            if need is not None:
                containers.append(need)
                kinds.append(kind)

    if len(containers) > MAX_GPU_CONTAINERS_PER_POD:
        raise InvalidRequest("spec", f"{len(containers)} containers ask for {settings.vgpu_resource}; at most "
                             f"{MAX_GPU_CONTAINERS_PER_POD} containers of a pod may", pod=who)
    pool = _pool(labels, spec, settings.pool_label, who) if settings.pools_enabled else None
    policy = _string(annotations.get(POLICY_ANNOTATION), f"metadata.annotations[{POLICY_ANNOTATION}]", who) or None
    if count is not None and not containers:
        raise InvalidRequest(f"metadata.annotations[{GPU_COUNT_ANNOTATION}]",
                             f"is set but no container asks for {settings.vgpu_resource}", pod=who)
    return PodRequest(uid=uid or "", namespace=namespace, name=name, pool=pool, models=_gpu_models(annotations, who),
                      containers=tuple(containers), phases=phases_of(tuple(kinds)), policy=policy,
                      sharing=_sharing(annotations, who))


def _sharing(annotations: Mapping, who: str) -> str:
    sharing = _string(annotations.get(SHARING_ANNOTATION), f"metadata.annotations[{SHARING_ANNOTATION}]", who)
    if sharing and sharing not in SHARING_MODES:
        raise InvalidRequest(f"metadata.annotations[{SHARING_ANNOTATION}]",
                             f"must be one of {', '.join(SHARING_MODES)}, got {sharing!r}", pod=who)
    return sharing or TIME_SLICING


def _container_need(
    container: Mapping, kind: ContainerKind, path: str, count: int | None, settings: CoreSettings, who: str
) -> ContainerNeed | None:
    name = _string(container.get("name"), f"{path}.name", who) or path
    resources = _mapping(container.get("resources"), f"{path}.resources", who)
    units = _amount(resources, settings.vgpu_resource, f"{path}.resources", who)
    memory = _amount(resources, settings.memory_resource, f"{path}.resources", who)
    if not units:
        if memory:
            raise InvalidRequest(
                f"{path}.resources[{settings.memory_resource}]",
                f"asks for GPU memory without {settings.vgpu_resource}; ask for units too",
                pod=who,
            )
        return None
    per_gpu_limit = settings.units_per_gpu
    if count is not None:
        if units % count:
            raise InvalidRequest(
                f"{path}.resources[{settings.vgpu_resource}]",
                f"{units} units cannot be split evenly over {GPU_COUNT_ANNOTATION}={count} GPUs",
                pod=who,
            )
        per_gpu = units // count
        if per_gpu > per_gpu_limit:
            raise InvalidRequest(
                f"{path}.resources[{settings.vgpu_resource}]",
                f"{units} units over {count} GPUs is {per_gpu} per GPU, more than unitsPerGpu={per_gpu_limit}",
                pod=who,
            )
        gpus = count
    elif units <= per_gpu_limit:
        per_gpu, gpus = units, 1
    elif units % per_gpu_limit:
        raise InvalidRequest(
            f"{path}.resources[{settings.vgpu_resource}]",
            f"{units} is more than one GPU (unitsPerGpu={per_gpu_limit}) and so must be a multiple of "
            f"{per_gpu_limit} (whole GPUs)",
            pod=who,
        )
    else:
        per_gpu, gpus = per_gpu_limit, units // per_gpu_limit
    memory_per_gpu = None if not memory else -(-memory // gpus)
    return ContainerNeed(name=name, kind=kind, units=per_gpu, count=gpus, memory_mib=memory_per_gpu)


def _amount(resources: Mapping, resource: str, path: str, who: str) -> int:
    """The container's amount of an extended resource: limits, else requests; both must agree when both set."""
    values = {}
    for section in ("limits", "requests"):
        block = _mapping(resources.get(section), f"{path}.{section}", who)
        if resource in block:
            field = f"{path}.{section}[{resource}]"
            try:
                values[section] = parse_integer_quantity(block[resource])
            except ValueError as exc:
                raise InvalidRequest(field, str(exc), pod=who) from None
            if values[section] < 0:
                raise InvalidRequest(field, f"must not be negative, got {values[section]}", pod=who)
    if len(values) == 2 and values["limits"] != values["requests"]:
        raise InvalidRequest(
            f"{path}[{resource}]",
            f"requests ({values['requests']}) must equal limits ({values['limits']}) for an extended resource",
            pod=who,
        )
    return values.get("limits", values.get("requests", 0))


def _gpu_count(annotations: Mapping, who: str) -> int | None:
    raw = annotations.get(GPU_COUNT_ANNOTATION)
    if raw is None:
        return None
    try:
        return whole_number(raw, maximum=MAX_GPUS_PER_NODE, what="GPUs (the most a node may have)")
    except ValueError as exc:
        raise InvalidRequest(f"metadata.annotations[{GPU_COUNT_ANNOTATION}]", str(exc), pod=who) from None


def _gpu_models(annotations: Mapping, who: str) -> tuple[str, ...] | None:
    raw = annotations.get(GPU_MODEL_ANNOTATION)
    if raw is None:
        return None
    field = f"metadata.annotations[{GPU_MODEL_ANNOTATION}]"
    if not isinstance(raw, str):
        raise InvalidRequest(field, f"must be a string like \"A100|H100\", got {raw!r}", pod=who)
    models = tuple(sorted({m.strip() for m in raw.split("|") if m.strip()}))
    if not models:
        raise InvalidRequest(field, "names no model; remove it or list models like \"A100|H100\"", pod=who)
    return models


def _mapping(value: object, field: str, who: str | None) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRequest(field, f"must be an object, got {type(value).__name__}", pod=who)
    return value


def _string(value: object, field: str, who: str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidRequest(field, f"must be a string, got {type(value).__name__}", pod=who)


def _pool(labels: Mapping, spec: Mapping, key: str, who: str | None) -> str | None:
    """The pod's pool: its own label ``key``, else its ``nodeSelector`` on ``key``, else the one value of ``key``
    its required node affinity allows, so manifests that already choose their node pool this way work unchanged.
    An affinity that allows several pools names none (the pod then fits only nodes without a pool, and says so)."""
    label = _string(labels.get(key), f"metadata.labels[{key}]", who)
    if label:
        return label
    selector = spec.get("nodeSelector")
    if isinstance(selector, Mapping) and selector.get(key):
        return _string(selector[key], f"spec.nodeSelector[{key}]", who)
    allowed = _affinity_values(spec, key)
    return next(iter(allowed)) if len(allowed) == 1 else None


def _affinity_values(spec: Mapping, key: str) -> set[str]:
    """The values of ``key`` that the pod's required node affinity allows: terms are ORed, the expressions of a
    term ANDed (``In`` narrows, ``NotIn`` removes); empty when a term leaves ``key`` open (the pod may then go to
    any pool) or the affinity is not one the API server would accept."""
    affinity = spec.get("affinity") if isinstance(spec.get("affinity"), Mapping) else {}
    node = affinity.get("nodeAffinity") if isinstance(affinity.get("nodeAffinity"), Mapping) else {}
    required = node.get("requiredDuringSchedulingIgnoredDuringExecution")
    terms = required.get("nodeSelectorTerms") if isinstance(required, Mapping) else None
    if not isinstance(terms, list) or not terms:
        return set()
    allowed: set[str] = set()
    for term in terms:
        expressions = term.get("matchExpressions") if isinstance(term, Mapping) else None
        values: set[str] | None = None  # None: the term leaves the pool open
        removed: set[str] = set()
        for e in expressions if isinstance(expressions, list) else []:
            if not isinstance(e, Mapping) or e.get("key") != key or not isinstance(e.get("values"), list):
                continue
            given = {v for v in e["values"] if isinstance(v, str)}
            if e.get("operator") == "In":
                values = given if values is None else values & given
            elif e.get("operator") == "NotIn":
                removed |= given
        if values is None:
            return set()
        allowed |= values - removed
    return allowed
