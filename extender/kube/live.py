"""Live mode: list, then watch, Nodes and Pods from the API server; bind with Binding objects.

kopf's discipline: list, then watch from the list's ``resourceVersion``; on ``410 Gone`` relist at once; on
any other error back off (doubling, capped) and relist. A relist also reports what was deleted while we were
not watching. Objects stay raw JSON dicts (``_preload_content=False`` + orjson): deserialising 100,000 pods into
client models would cost seconds and we read them as dicts anyway. The blocking client runs in threads;
everything that touches the ledger runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from ..api.source import BindError, ClusterSink

log = logging.getLogger("fracgpu.live")
WATCH_SECONDS = 300


class Gone(Exception):
    """The watch's resourceVersion is too old (410): relist."""


class LiveCluster:
    def __init__(self, api: Any, *, backoff: tuple[float, float] = (0.5, 30.0), watch_seconds: int = WATCH_SECONDS,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.api = api
        self.backoff = backoff
        self.watch_seconds = watch_seconds
        self.sleep = sleep
        self._open: set[Any] = set()

    @classmethod
    def connect(cls, kubeconfig: Path | None) -> "LiveCluster":
        if kubeconfig is not None:
            config.load_kube_config(config_file=str(kubeconfig))
        else:
            config.load_incluster_config()
        return cls(client.CoreV1Api())

    # ------------------------------------------------------------------ feed
    async def run(self, sink: ClusterSink) -> None:
        listed = {"nodes": asyncio.Event(), "pods": asyncio.Event()}

        async def announce() -> None:
            await listed["nodes"].wait()
            await listed["pods"].wait()
            sink.on_synced()

        nodes = _Kind("nodes", self.api.list_node, lambda o: o["metadata"]["name"],
                      lambda o: sink.on_node(o), lambda k, o: sink.on_node_deleted(k))
        pods = _Kind("pods", self.api.list_pod_for_all_namespaces, lambda o: o["metadata"].get("uid") or "",
                     lambda o: sink.on_pod(o), lambda k, o: sink.on_pod_deleted(o))
        try:
            await asyncio.gather(self._informer(nodes, listed["nodes"]), self._informer(pods, listed["pods"]),
                                 announce())
        finally:
            for response in list(self._open):
                response.close()

    async def _informer(self, kind: "_Kind", listed: asyncio.Event) -> None:
        delay = self.backoff[0]
        while True:
            try:
                version = await self._list(kind)
                listed.set()
                delay = self.backoff[0]
                while True:
                    version = await self._watch(kind, version)
            except Gone:
                log.info("%s: watch expired (410 Gone), relisting", kind.name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # API server away, TLS, a broken stream: back off, relist
                log.warning("%s: %s: %s; relisting in %.1f s", kind.name, type(exc).__name__, exc, delay)
                await self.sleep(delay)
                delay = min(delay * 2, self.backoff[1])

    async def _list(self, kind: "_Kind") -> str:
        response = await asyncio.to_thread(kind.list_fn, _preload_content=False)
        data = orjson.loads(response.data)
        seen = {}
        for item in data.get("items") or []:
            seen[kind.key(item)] = item
            kind.upsert(item)
        for key in set(kind.known) - set(seen):  # deleted while we were not watching
            kind.delete(key, kind.known[key])
        kind.known = seen
        return data["metadata"]["resourceVersion"]

    async def _watch(self, kind: "_Kind", version: str) -> str:
        """Follow one watch request to its end; return the resourceVersion to continue from."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        response = await asyncio.to_thread(
            kind.list_fn, watch=True, resource_version=version, allow_watch_bookmarks=True,
            timeout_seconds=self.watch_seconds, _preload_content=False)
        self._open.add(response)

        def pump() -> None:
            try:
                for line in _lines(response):
                    loop.call_soon_threadsafe(queue.put_nowait, ("event", line))
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except Exception as exc:  # noqa: BLE001 - handed to the loop, which decides
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        reader = asyncio.create_task(asyncio.to_thread(pump))
        try:
            while True:
                what, payload = await queue.get()
                if what == "end":
                    return version
                if what == "error":
                    raise payload
                event = orjson.loads(payload)
                kind_, obj = event.get("type"), event.get("object") or {}
                if kind_ == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if kind_ == "BOOKMARK":
                    continue
                key = kind.key(obj)
                if kind_ == "DELETED":
                    kind.known.pop(key, None)
                    kind.delete(key, obj)
                elif kind_ in ("ADDED", "MODIFIED"):
                    kind.known[key] = obj
                    kind.upsert(obj)
        finally:
            response.close()
            self._open.discard(response)
            reader.cancel()

    async def catch_up(self) -> bool:
        """One consistent read of the pod list (a single item): when it returns, the API server has sent our
        watch every pod event it committed before the read, so draining the loop delivers them.
        """
        response = await asyncio.to_thread(self.api.list_pod_for_all_namespaces, limit=1, _preload_content=False)
        response.release_conn()
        for _ in range(3):  # the pump thread's call_soon_threadsafe, the queue, the informer's upsert
            await asyncio.sleep(0)
        return True

    # ------------------------------------------------------------------ reads and binds
    async def get_pod(self, namespace: str, name: str) -> dict | None:
        try:
            response = await asyncio.to_thread(self.api.read_namespaced_pod, name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return orjson.loads(response.data)

    async def bind(self, *, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]) -> None:
        """POST a Binding: spec.nodeName and the annotations land together, guarded by the pod's UID.

        The official client cannot decode the server's reply to this call, hence ``_preload_content=False``.
        """
        body = client.V1Binding(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace, uid=uid, annotations=annotations),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=node),
        )
        try:
            response = await asyncio.to_thread(self.api.create_namespaced_binding, namespace, body,
                                               _preload_content=False)
        except ApiException as exc:
            message = _status_message(exc)
            raise BindError(f"{exc.status} {exc.reason}: {message}", conflict=exc.status in (404, 409)) from None
        if response.status not in (200, 201):
            raise BindError(f"unexpected status {response.status} from the API server")


class _Kind:
    def __init__(self, name: str, list_fn: Callable, key: Callable[[dict], str], upsert: Callable[[dict], None],
                 delete: Callable[[str, dict], None]) -> None:
        self.name, self.list_fn, self.key, self.upsert, self.delete = name, list_fn, key, upsert, delete
        self.known: dict[str, dict] = {}


def _lines(response: Any) -> Iterator[bytes]:
    """Newline-delimited JSON events from a streaming urllib3 response."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=True):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield line
    if pending.strip():
        yield pending


def _status_message(exc: ApiException) -> str:
    try:
        return orjson.loads(exc.body).get("message") or str(exc.body)
    except Exception:  # noqa: BLE001 - a body that is not a Status
        return str(exc.body)
