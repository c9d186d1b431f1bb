"""Live mode: list, then watch, Nodes and Pods from the API server; bind with Binding objects (``rest.py``).

kopf's discipline: list, then watch from the list's ``resourceVersion``; on ``410 Gone`` relist at once; on
any other error back off (doubling, capped) and relist. A relist also reports what was deleted while we were
not watching. Objects stay raw JSON dicts (``_preload_content=False`` + orjson): deserialising 100,000 pods into
client models would cost seconds and we read them as dicts anyway. The blocking client runs in threads;
everything that touches the ledger runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
from kubernetes import client
from kubernetes.client.rest import ApiException

from ..api.source import BindError, ClusterSink, object_key
from .config import kube_configuration
from .rest import RestClient, status_message

log = logging.getLogger("fracgpu.live")
WATCH_SECONDS = 300
API_THREADS = 8


class Gone(Exception):
    """The watch's resourceVersion is too old (410): relist."""


class LiveCluster:
    def __init__(self, api: Any, rest: RestClient, *, backoff: tuple[float, float] = (0.5, 30.0), watch_seconds: int = WATCH_SECONDS,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.api = api
        self.rest = rest  # binds: the hot path, over aiohttp
        self.backoff = backoff
        self.watch_seconds = watch_seconds
        self.sleep = sleep
        self._open: set[Any] = set()
        # Blocking client calls (lists, opening watches, reading a pod, the catch-up read) run here; binds go
        # over aiohttp (rest.py) and the watch pumps have daemon threads of their own.
        self._threads = ThreadPoolExecutor(max_workers=API_THREADS, thread_name_prefix="fracgpu-api")

    @classmethod
    def connect(cls, kubeconfig: Path | None) -> "LiveCluster":
        configuration = kube_configuration(kubeconfig)
        configuration.connection_pool_maxsize = API_THREADS  # one kept-alive connection per thread
        return cls(client.CoreV1Api(client.ApiClient(configuration)), RestClient.from_configuration(configuration))

    async def _call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._threads, partial(fn, *args, **kwargs))

    # ------------------------------------------------------------------ feed
    async def run(self, sink: ClusterSink) -> None:
        listed = {"nodes": asyncio.Event(), "pods": asyncio.Event()}

        async def announce() -> None:
            await listed["nodes"].wait()
            await listed["pods"].wait()
            sink.on_synced()

        nodes = _Kind("nodes", self.api.list_node, "name", sink.on_node, lambda k, o: sink.on_node_deleted(k))
        pods = _Kind("pods", self.api.list_pod_for_all_namespaces, "uid", sink.on_pod,
                     lambda k, o: sink.on_pod_deleted(o))
        try:
            await asyncio.gather(self._informer(nodes, listed["nodes"]), self._informer(pods, listed["pods"]),
                                 announce())
        finally:
            for response in list(self._open):
                _abort(response)

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
        response = await self._call(kind.list_fn, _preload_content=False)
        data = orjson.loads(response.data)
        seen = {}
        for item in data.get("items") or []:
            key = kind.key(item)
            if key is not None:
                seen[key] = item
                kind.upsert(item)
        for key in set(kind.known) - set(seen):  # deleted while we were not watching
            kind.delete(key, kind.known[key])
        kind.known = seen
        return data["metadata"]["resourceVersion"]

    async def _watch(self, kind: "_Kind", version: str) -> str:
        """Follow one watch request to its end; return the resourceVersion to continue from."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        response = await self._call(
            kind.list_fn, watch=True, resource_version=version, allow_watch_bookmarks=True,
            timeout_seconds=self.watch_seconds, _preload_content=False)
        self._open.add(response)

        def pump() -> None:
            def hand(item: tuple) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, item)

            try:
                try:
                    for line in _lines(response):
                        hand(("event", line))
                    hand(("end", None))
                except Exception as exc:  # noqa: BLE001 - handed to the loop, which decides
                    hand(("error", exc))
            except RuntimeError:  # the loop has closed: we are shutting down
                pass
            finally:
                response.close()

        # A daemon thread, not a pool's: it may sit in a blocking read for the whole watch (minutes), and a
        # pool thread would hold the process at exit. Found by sending SIGTERM: it did not exit in 40 s.
        threading.Thread(target=pump, name=f"fracgpu-watch-{kind.name}", daemon=True).start()
        try:
            while True:
                what, payload = await queue.get()
                if what == "end":
                    return version
                if what == "error":
                    raise payload
                event = orjson.loads(payload)
                kind_, obj = (event.get("type"), event.get("object") or {}) if isinstance(event, dict) else (None, 0)
                if not isinstance(obj, dict):
                    log.warning("%s: a watch event that is not an object, or whose object is not: skipped", kind.name)
                    continue
                if kind_ == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if kind_ == "BOOKMARK":
                    continue
                key = kind.key(obj)
                if key is None:
                    continue
                if kind_ == "DELETED":
                    kind.known.pop(key, None)
                    kind.delete(key, obj)
                elif kind_ in ("ADDED", "MODIFIED"):
                    kind.known[key] = obj
                    kind.upsert(obj)
        finally:
            _abort(response)
            self._open.discard(response)

    async def catch_up(self) -> bool:
        """One consistent read of the pod list (a single item): when it returns, the API server has sent our
        watch every pod event it committed before the read, so draining the loop delivers them.
        """
        response = await self._call(self.api.list_pod_for_all_namespaces, limit=1, _preload_content=False)
        response.release_conn()
        for _ in range(3):  # the pump thread's call_soon_threadsafe, the queue, the informer's upsert
            await asyncio.sleep(0)
        return True

    # ------------------------------------------------------------------ reads and binds
    async def get_pod(self, namespace: str, name: str) -> dict | None:
        try:
            response = await self._call(self.api.read_namespaced_pod, name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return orjson.loads(response.data)

    async def bind(self, *, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]) -> None:
        """POST a Binding: spec.nodeName and the annotations land together, guarded by the pod's UID."""
        body = {
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "annotations": annotations},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        status, reply = await self.rest.post(f"/api/v1/namespaces/{namespace}/pods/{name}/binding", body)
        if status not in (200, 201):
            raise BindError(status_message(status, reply), conflict=status in (404, 409))

    async def close(self) -> None:
        await self.rest.close()
        self._threads.shutdown(wait=False, cancel_futures=True)


class _Kind:
    def __init__(self, name: str, list_fn: Callable, key_field: str, upsert: Callable[[dict], None],
                 delete: Callable[[str, dict], None]) -> None:
        self.name, self.list_fn, self.key_field, self.upsert, self.delete = name, list_fn, key_field, upsert, delete
        self.known: dict[str, dict] = {}

    def key(self, obj: object) -> str | None:
        return object_key(obj, self.key_field, self.name)


def _abort(response: Any) -> None:
    """End a watch that a pump thread may be blocked reading. Closing the response from here would wait on
    that read (seen: SIGTERM did not stop the extender); shutting the socket down wakes the read instead, and
    the pump closes the response itself."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is None:
        response.close()
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


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
