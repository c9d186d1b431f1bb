"""Admission of pods: inject the hand-off into pods that ask for fracgpu resources, and refuse what would let a
pod take, free or see GPUs it was not given.

:func:`review` answers one pod CREATE or UPDATE (the pod, the pod before the update, the requesting user) with
an :class:`Answer`: allowed, or refused with a message that names the field; and, for an allowed CREATE of a
fracgpu pod, the JSON patch (RFC 6902) that adds the hand-off environment (:mod:`extender.core.handoff`) to every
container. The HTTP side (an ``AdmissionReview`` v1 webhook) is :mod:`extender.api.app`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from .errors import InvalidRequest
from .handoff import DOMAIN, NO_GPU, env_for
from .resources import parse_pod
from .settings import ASSIGNMENT_ANNOTATION, CoreSettings

# Variables that decide which GPUs a container sees, or how it shares them: only the hand-off may set them.
RESERVED_ENV = ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES")
RESERVED_ENV_PREFIXES = ("CUDA_MPS_", "FRACGPU_")


@dataclass(frozen=True)
class Answer:
    allowed: bool
    message: str = ""
    patch: list[dict] = field(default_factory=list)


def review(pod: Mapping, *, operation: str, user: str, old: Mapping | None, settings: CoreSettings,
           extender_user: str, scheduler_name: str) -> Answer:
    """Admit or refuse one pod CREATE or UPDATE (see the module docstring)."""
    refused = _protected_annotations(pod, old, user, extender_user)
    if refused:
        return Answer(False, refused)
    if operation != "CREATE":
        return Answer(True)
    try:
        request = parse_pod(pod, settings)
    except InvalidRequest as exc:
        return Answer(False, str(exc))
    if not request.wants_gpu:
        return Answer(True)
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return Answer(False, f"spec.nodeName: a pod that asks for {settings.vgpu_resource} must be placed by "
                             f"{scheduler_name}, not bound by its creator (spec.nodeName={spec['nodeName']!r})")
    if spec.get("schedulerName") != scheduler_name:
        return Answer(False, f"spec.schedulerName: a pod that asks for {settings.vgpu_resource} must name "
                             f"{scheduler_name!r}, not {spec.get('schedulerName')!r}")
    patch: list[dict] = []
    gpu_containers = {c.name for c in request.containers}
    for field_name in ("initContainers", "containers"):
        for position, container in enumerate(spec.get(field_name) or []):  # parse_pod checked they are objects
            where = f"spec.{field_name}[{position}]"
            env = container.get("env") or []
            if not isinstance(env, list):
                return Answer(False, f"{where}.env: must be a list")
            for index, entry in enumerate(env):
                name = entry.get("name") if isinstance(entry, Mapping) else None
                if isinstance(name, str) and (name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES)):
                    return Answer(False, f"{where}.env[{index}]: {name} is set by fracgpu from the pod's "
                                         f"assignment; a pod may not set it")
            if container.get("name") in gpu_containers:
                wanted = env_for(str(container["name"]))
            else:
                wanted = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": NO_GPU}]
            path = f"/spec/{field_name}/{position}/env"
            if env:
                patch.extend({"op": "add", "path": f"{path}/-", "value": entry} for entry in wanted)
            else:
                patch.append({"op": "add", "path": path, "value": wanted})
    return Answer(True, patch=patch)


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
