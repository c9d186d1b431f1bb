"""Where the extender's picture of the cluster comes from, and where its bindings go.

Two implementations: :class:`extender.api.static.StaticCluster` (a file; bindings change memory only) and
:class:`extender.kube.live.LiveCluster` (list + watch against the API server; bindings are Binding objects).
Both feed the same :class:`ClusterSink`, which is how the ledger is kept current.
"""

from __future__ import annotations

import logging
from typing import Mapping, Protocol

from .. import logs

log = logging.getLogger("fracgpu.feed")


def object_key(obj: object, field: str, kind: str) -> str | None:
    """``metadata.<field>`` of a cluster object (``name`` of a node, ``uid`` of a pod), or None, with a warning,
    for an object without one as a non-empty string: such an object is skipped, and the feed goes on."""
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    key = metadata.get(field) if isinstance(metadata, Mapping) else None
    if isinstance(key, str) and key:
        return key
    log.warning("%s: an object without a string metadata.%s was skipped: %s", kind, field,
                logs.escape(repr(obj), 200))
    return None


class BindError(Exception):
    """A binding the cluster refused. ``conflict``: the pod is already bound (or gone/replaced)."""

    def __init__(self, message: str, *, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict


class ClusterSink(Protocol):
    def on_node(self, node: Mapping) -> None: ...
    def on_node_deleted(self, name: str) -> None: ...
    def on_pod(self, pod: Mapping) -> None: ...
    def on_pod_deleted(self, pod: Mapping) -> None: ...
    def on_synced(self) -> None: ...


class ClusterSource(Protocol):
    async def run(self, sink: ClusterSink) -> None:
        """Feed the sink: everything there is, then every change, until cancelled. Calls ``on_synced`` once
        the first full listing of nodes and pods has been delivered."""

    async def get_pod(self, namespace: str, name: str) -> dict | None: ...

    async def close(self) -> None:
        """Release connections and threads; called once when the server stops."""

    async def catch_up(self) -> bool:
        """Let changes the API server has already sent reach the sink; True if there may have been some.

        Filter calls it before it answers that a pod fits nowhere: kube-scheduler retries such a pod on the
        very cluster event (say, a deleted pod) that frees room, and its informer may hear of that event a few
        milliseconds before our watch does. Rejecting on the older state would park the pod until some later
        event, which in a quiet cluster is minutes away.
        """

    async def bind(self, *, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]) -> None:
        """Bind the pod (guarded by its UID) with these annotations, atomically. Raises :class:`BindError`."""
