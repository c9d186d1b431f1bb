"""Wire types of ``k8s.io/kube-scheduler/extender/v1``, as kube-scheduler speaks them.

The Go types carry no JSON tags, so the wire uses the Go field names (``Pod``, ``NodeNames``,
``FailedAndUnresolvableNodes`` ...), nil pointers and maps travel as ``null``, and Go's decoder matches keys
case-insensitively. These models therefore emit exactly the Go field names (every field, like Go does) and
accept any casing of the keys on the way in. Pods and Nodes stay plain dicts: the core reads them as such.
``tests/test_wire.py`` pins the JSON against upstream's own ``TestCompatibility`` cases.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from ..core.limits import MAX_CANDIDATES, MAX_INT64, MAX_VICTIMS

MAX_EXTENDER_PRIORITY = 10


class WireModel(BaseModel):
    """Go-compatible JSON: PascalCase out, any casing in, unknown keys ignored, ``None`` as ``null``."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _any_case(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        by_lower = _key_table(cls)
        out = {}
        for key, value in data.items():
            target = by_lower.get(key.lower()) if isinstance(key, str) else None
            if target is not None and target not in out:
                out[target] = value
        return out

    def to_wire(self) -> dict:
        return self.model_dump(by_alias=True, mode="json")

    def dumps(self) -> bytes:
        return orjson.dumps(self.to_wire())


@lru_cache(maxsize=None)
def _key_table(cls: type[WireModel]) -> dict[str, str]:
    """Lower-cased Go name (and Python field name) -> Go name, built once per model."""
    table = {}
    for name, field in cls.model_fields.items():
        table[(field.alias or name).lower()] = field.alias or name
        table[name] = field.alias or name  # Python-side construction by field name
    return table


def encode_priorities(pairs: list[tuple[str, int]]) -> bytes:
    """A HostPriorityList as JSON, without building a model per host (Prioritize's hot path). Pinned to
    ``HostPriorityList`` by tests/test_wire.py."""
    return orjson.dumps([{"Host": host, "Score": score} for host, score in pairs])


class ExtenderArgs(WireModel):
    pod: dict | None = Field(default=None, alias="Pod")
    nodes: dict | None = Field(default=None, alias="Nodes")
    node_names: list[str] | None = Field(default=None, alias="NodeNames", max_length=MAX_CANDIDATES)


class ExtenderFilterResult(WireModel):
    nodes: dict | None = Field(default=None, alias="Nodes")
    node_names: list[str] | None = Field(default=None, alias="NodeNames")
    failed_nodes: dict[str, str] | None = Field(default=None, alias="FailedNodes")
    failed_and_unresolvable_nodes: dict[str, str] | None = Field(default=None, alias="FailedAndUnresolvableNodes")
    error: str = Field(default="", alias="Error")


class HostPriority(WireModel):
    host: str = Field(alias="Host")
    score: int = Field(alias="Score")


class HostPriorityList(RootModel[list[HostPriority]]):
    def to_wire(self) -> list:
        return self.model_dump(by_alias=True, mode="json")

    def dumps(self) -> bytes:
        return orjson.dumps(self.to_wire())


# Kubernetes object names (DNS-1123 subdomains; a namespace is a DNS-1123 label) and UIDs as the API server
# issues them: what a Binding carries is written to the log and into error messages, so nothing else is taken.
_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_UID = r"^[!-~]+$"  # printable ASCII without spaces


class ExtenderBindingArgs(WireModel):
    pod_name: str = Field(alias="PodName", max_length=253, pattern=_SUBDOMAIN)
    pod_namespace: str = Field(alias="PodNamespace", max_length=63, pattern=_LABEL)
    pod_uid: str = Field(alias="PodUID", max_length=128, pattern=_UID)
    node: str = Field(alias="Node", max_length=253, pattern=_SUBDOMAIN)


class ExtenderBindingResult(WireModel):
    error: str = Field(default="", alias="Error")


class MetaPod(WireModel):
    uid: str = Field(alias="UID")


class MetaVictims(WireModel):
    pods: list[MetaPod] | None = Field(default=None, alias="Pods", max_length=MAX_VICTIMS)
    num_pdb_violations: int = Field(default=0, alias="NumPDBViolations", ge=0, le=MAX_INT64)  # Go's int64


class Victims(WireModel):
    pods: list[dict] | None = Field(default=None, alias="Pods", max_length=MAX_VICTIMS)
    num_pdb_violations: int = Field(default=0, alias="NumPDBViolations", ge=0, le=MAX_INT64)


class ExtenderPreemptionArgs(WireModel):
    pod: dict | None = Field(default=None, alias="Pod")
    node_name_to_victims: dict[str, Victims | None] | None = Field(default=None, alias="NodeNameToVictims")
    node_name_to_meta_victims: dict[str, MetaVictims | None] | None = Field(default=None, alias="NodeNameToMetaVictims")


class ExtenderPreemptionResult(WireModel):
    node_name_to_meta_victims: dict[str, MetaVictims] | None = Field(default=None, alias="NodeNameToMetaVictims")
