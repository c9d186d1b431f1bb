"""Admission of pods: inject the hand-off into pods that ask for fracgpu resources, and refuse what would let a
pod take, free or see GPUs it was not given.

:func:`review` answers one pod CREATE or UPDATE (the pod, the pod before the update, the requesting user) with
an :class:`Answer`: allowed, or refused with a message that names the field; and, for an allowed CREATE of a
fracgpu pod, the JSON patch (RFC 6902) that adds the hand-off environment (:mod:`extender.core.handoff`) to every
container and the runtime class that acts on it. A pod that asks for MPS (``fracgpu.io/sharing: mps``) is also
sent to MPS nodes (their label and taint) and given the MPS daemon's pipes and shared memory. The HTTP side (an
``AdmissionReview`` v1 webhook) is :mod:`extender.api.app`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from .errors import InvalidRequest
from .handoff import DOMAIN, MPS_PIPES, MPS_SHM, NO_GPU, env_for
from .resources import PodRequest, parse_pod
from .settings import ASSIGNMENT_ANNOTATION, MPS, SHARING_ANNOTATION, SHARING_LABEL, CoreSettings

# Variables that decide which GPUs a container sees, or how it shares them: only the hand-off may set them.
RESERVED_ENV = ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES")
RESERVED_ENV_PREFIXES = ("CUDA_MPS_", "FRACGPU_")
MPS_TOLERATION = {"key": SHARING_LABEL, "operator": "Equal", "value": MPS, "effect": "NoSchedule"}
NO_GPU_ENV = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": NO_GPU}]  # every container of a GPU pod but its GPU ones
MPS_VOLUMES = {"fracgpu-mps-pipe": (MPS_PIPES, MPS_PIPES), "fracgpu-mps-shm": (MPS_SHM, "/dev/shm")}  # host, in


@dataclass(frozen=True)
class Answer:
    allowed: bool
    message: str = ""
    patch: list[dict] = field(default_factory=list)


def review(pod: Mapping, *, operation: str, user: str, old: Mapping | None, settings: CoreSettings,
           extender_user: str, scheduler_name: str, runtime_class: str = "", sub_resource: str = "") -> Answer:
    """Admit or refuse one pod CREATE or UPDATE (see the module docstring); ``sub_resource`` is the request's
    (``ephemeralcontainers`` for ``kubectl debug``).

    ``runtime_class``, where set, names the RuntimeClasses whose handler is the NVIDIA container runtime (on
    nodes where it is not the default runtime), comma-separated: fracgpu pods get the first, every other pod is
    refused all of them, so only a pod with an assignment runs where ``NVIDIA_VISIBLE_DEVICES`` is acted on.

    Admission may be invoked again on its own output (``reinvocationPolicy: IfNeeded``, after another webhook
    changed the pod): what it added is then recognised, entry for entry, and not added twice."""
    refused = _protected_annotations(pod, old, user, extender_user)
    if refused:
        return Answer(False, refused)
    if sub_resource == "ephemeralcontainers":
        return _ephemeral_containers(pod, old or {})
    if operation != "CREATE":
        return _update(pod, old or {}, settings)
    try:
        request = parse_pod(pod, settings)
    except InvalidRequest as exc:
        return Answer(False, str(exc))
    spec = pod.get("spec") or {}
    runtime = spec.get("runtimeClassName")
    nvidia = [name.strip() for name in runtime_class.split(",") if name.strip()]
    if not request.wants_gpu:
        if runtime in nvidia:
            return Answer(False, f"spec.runtimeClassName: {runtime!r} is a runtime that exposes GPUs; only "
                                 f"a pod that asks for {settings.vgpu_resource} may use it")
        return Answer(True)
    if spec.get("nodeName"):
        return Answer(False, f"spec.nodeName: a pod that asks for {settings.vgpu_resource} must be placed by "
                             f"{scheduler_name}, not bound by its creator (spec.nodeName={spec['nodeName']!r})")
    if spec.get("schedulerName") != scheduler_name:
        return Answer(False, f"spec.schedulerName: a pod that asks for {settings.vgpu_resource} must name "
                             f"{scheduler_name!r}, not {spec.get('schedulerName')!r}")
    patch: list[dict] = []
    if nvidia and runtime != nvidia[0]:
        if runtime is not None:
            return Answer(False, f"spec.runtimeClassName: a pod that asks for {settings.vgpu_resource} runs with "
                                 f"{nvidia[0]!r}, the runtime that hands it its GPUs, not {runtime!r}")
        patch.append({"op": "add", "path": "/spec/runtimeClassName", "value": nvidia[0]})
    try:
        patch += _sharing_patch(spec, request.sharing == MPS)
        patch += _containers_patch(spec, request)
    except InvalidRequest as exc:
        return Answer(False, str(exc))
    return Answer(True, patch=patch)


def _update(pod: Mapping, old: Mapping, settings: CoreSettings) -> Answer:
    """An update may not change the sharing mode, nor give a fracgpu pod that does not ask for MPS a toleration
    of MPS nodes' taint (Kubernetes lets a pod's tolerations grow after it is created)."""
    sharing = _annotation(pod, SHARING_ANNOTATION)
    if sharing != _annotation(old, SHARING_ANNOTATION):
        return Answer(False, f"metadata.annotations[{SHARING_ANNOTATION}]: is set when the pod is created and "
                             f"cannot change")
    try:
        wants_gpu = parse_pod(pod, settings).wants_gpu
    except InvalidRequest:
        wants_gpu = True  # what the pod asks cannot be read: hold it to the stricter rule
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    had = (old.get("spec") or {}).get("tolerations") or []
    if wants_gpu and sharing != MPS and isinstance(tolerations, list):
        for index, toleration in enumerate(tolerations):
            if isinstance(toleration, Mapping) and toleration not in had and _tolerates_mps(toleration):
                return Answer(False, f"spec.tolerations[{index}]: tolerates the taint of MPS nodes, where a pod "
                                     f"must ask for MPS ({SHARING_ANNOTATION}: {MPS})")
    return Answer(True)


def _ephemeral_containers(pod: Mapping, old: Mapping) -> Answer:
    """A container added to a running pod (``kubectl debug``) runs with the pod's runtime, so with the NVIDIA
    runtime in a fracgpu pod: it sees no GPU (``NVIDIA_VISIBLE_DEVICES=void``, whatever its image sets), and may
    not set the GPU variables itself."""
    before = (old.get("spec") or {}).get("ephemeralContainers") or []
    present = {c.get("name") for c in before if isinstance(c, Mapping)}
    patch: list[dict] = []
    for position, container in enumerate((pod.get("spec") or {}).get("ephemeralContainers") or []):
        if not isinstance(container, Mapping) or container.get("name") in present:
            continue
        where = f"spec.ephemeralContainers[{position}]"
        env = container.get("env") or []
        try:
            _check_env(where, env, NO_GPU_ENV)
        except InvalidRequest as exc:
            return Answer(False, str(exc))
        patch += _append(f"/spec/ephemeralContainers/{position}/env", env, NO_GPU_ENV)
    return Answer(True, patch=patch)


def _check_env(where: str, env: object, ours: list[dict]) -> None:
    """InvalidRequest for a container that sets a variable only the hand-off may set, other than by the very
    entries the hand-off gives this container (``ours``: present when admission sees its own output again)."""
    if not isinstance(env, list):
        raise InvalidRequest(f"{where}.env", "must be a list")
    for index, entry in enumerate(env):
        if entry in ours:
            continue
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if isinstance(name, str) and (name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES)):
            raise InvalidRequest(f"{where}.env[{index}]", f"{name} is set by fracgpu from the pod's "
                                                          f"assignment; a pod may not set it")


def _containers_patch(spec: Mapping, request: PodRequest) -> list[dict]:
    """Each GPU container's hand-off (and, for MPS, the daemon's pipes and shared memory); NO_GPU for the others.
    Raises InvalidRequest for a container that sets a reserved variable itself."""
    gpu_containers = {c.name for c in request.containers}
    mps = request.sharing == MPS
    patch: list[dict] = []
    for field_name in ("initContainers", "containers"):
        for position, container in enumerate(spec.get(field_name) or []):  # parse_pod checked they are objects
            where = f"spec.{field_name}[{position}]"
            env = container.get("env") or []
            gpu = container.get("name") in gpu_containers
            wanted = env_for(str(container["name"]), mps=mps) if gpu else NO_GPU_ENV
            _check_env(where, env, wanted)
            patch += _append(f"/spec/{field_name}/{position}/env", env, wanted)
            if gpu and mps:
                mounts = container.get("volumeMounts") or []
                if not isinstance(mounts, list):
                    raise InvalidRequest(f"{where}.volumeMounts", "must be a list")
                ours = [{"name": name, "mountPath": inside} for name, (_, inside) in MPS_VOLUMES.items()]
                for index, mount in enumerate(mounts):
                    path = mount.get("mountPath") if isinstance(mount, Mapping) else None
                    if path in ("/dev/shm", MPS_PIPES) and mount not in ours:
                        raise InvalidRequest(f"{where}.volumeMounts[{index}]",
                                             f"an MPS client gets the MPS daemon's {path}; a pod may not mount it")
                patch += _append(f"/spec/{field_name}/{position}/volumeMounts", mounts, ours)
    return patch


def _sharing_patch(spec: Mapping, mps: bool) -> list[dict]:
    """An MPS pod goes to MPS nodes (their label, and a toleration of their taint) and mounts the MPS daemon's
    directories; any other fracgpu pod may not tolerate that taint (its GPUs there are the daemon's)."""
    tolerations = spec.get("tolerations") or []
    if not isinstance(tolerations, list):
        raise InvalidRequest("spec.tolerations", "must be a list")
    if not mps:
        for index, toleration in enumerate(tolerations):
            if isinstance(toleration, Mapping) and _tolerates_mps(toleration):
                raise InvalidRequest(f"spec.tolerations[{index}]", f"tolerates the taint of MPS nodes, where a pod "
                                                                   f"must ask for MPS ({SHARING_ANNOTATION}: {MPS})")
        return []
    selector = spec.get("nodeSelector") or {}
    if not isinstance(selector, Mapping):
        raise InvalidRequest("spec.nodeSelector", "must be an object")
    if selector.get(SHARING_LABEL, MPS) != MPS:
        raise InvalidRequest(f"spec.nodeSelector[{SHARING_LABEL}]", f"an MPS pod runs on nodes labelled {MPS}, "
                                                                   f"not {selector[SHARING_LABEL]!r}")
    volumes = spec.get("volumes") or []
    if not isinstance(volumes, list):
        raise InvalidRequest("spec.volumes", "must be a list")
    ours = [{"name": name, "hostPath": {"path": host, "type": "Directory"}} for name, (host, _) in MPS_VOLUMES.items()]
    taken = {v.get("name") for v in volumes if isinstance(v, Mapping) and v not in ours} & set(MPS_VOLUMES)
    if taken:
        raise InvalidRequest("spec.volumes", f"{sorted(taken)[0]} is the name of the volume fracgpu adds for MPS")
    patch = [] if selector.get(SHARING_LABEL) == MPS else [
        {"op": "add", "path": "/spec/nodeSelector", "value": {**selector, SHARING_LABEL: MPS}}]
    patch += _append("/spec/tolerations", tolerations, [MPS_TOLERATION])
    return patch + _append("/spec/volumes", volumes, ours)


def _tolerates_mps(toleration: Mapping) -> bool:
    """Whether a toleration matches MPS nodes' taint, as Kubernetes matches them (an empty key with Exists
    matches every taint; an empty effect every effect)."""
    if toleration.get("effect") not in (None, "", "NoSchedule"):
        return False
    key, operator = toleration.get("key") or "", toleration.get("operator") or "Equal"
    if not key:
        return operator == "Exists"
    return key == SHARING_LABEL and (operator == "Exists" or toleration.get("value") == MPS)


def _append(path: str, present: list, entries: list[dict]) -> list[dict]:
    """JSON-patch operations that append to the list at ``path`` (creating it when empty) those of ``entries``
    it does not hold yet."""
    entries = [entry for entry in entries if entry not in present]
    if not entries:
        return []
    if present:
        return [{"op": "add", "path": f"{path}/-", "value": entry} for entry in entries]
    return [{"op": "add", "path": path, "value": entries}]


def _annotation(pod: Mapping, key: str) -> object:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return annotations.get(key) if isinstance(annotations, Mapping) else None


def _protected_annotations(pod: Mapping, old: Mapping | None, user: str, extender_user: str) -> str:
    """A message when someone but the extender sets or changes the assignment or a hand-off annotation."""
    if user == extender_user:
        return ""
    now, before = _protected(pod), _protected(old or {})
    for key in sorted(set(now) | set(before)):
        if now.get(key) != before.get(key):
            return (f"metadata.annotations[{key}]: only fracgpu's extender ({extender_user}) may set or change it; "
                    f"it is written with the pod's binding")
    return ""


def _protected(pod: Mapping) -> dict[str, object]:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if not isinstance(annotations, Mapping):
        return {}
    return {k: v for k, v in annotations.items()
            if k == ASSIGNMENT_ANNOTATION or (isinstance(k, str) and k.split("/")[0].endswith("." + DOMAIN))}
