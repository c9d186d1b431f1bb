"""The HTTP face of the extender: ``create_app(settings, *, source=None) -> web.Application``.

``POST /filter``, ``/prioritize``, ``/bind``, ``/preempt`` speak kube-scheduler's extender protocol;
``GET /healthz`` (alive), ``/readyz`` (ledger synced), ``/metrics`` (Prometheus), ``/inspect`` (who holds what).

Errors: a body that is not the protocol's JSON is answered 400 with ``{"Error": "..."}`` naming what was
wrong, a body over the size limit 413, a fault of ours 500 — never a traceback, never a changed ledger.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import time
import zlib
from contextlib import suppress
from typing import AsyncIterator

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from ..core.admission import review
from .serve import IN_FLIGHT, CappedSite, track_requests
from .service import BadRequest, Extender
from .settings import ExtenderSettings
from .source import ClusterSource
from .static import StaticCluster
from .wire import (
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderFilterResult,
    ExtenderPreemptionArgs,
    WireModel,
    encode_priorities,
)

log = logging.getLogger("fracgpu.extender")
EXTENDER = web.AppKey("extender", Extender)


def create_app(settings: ExtenderSettings, *, source: ClusterSource | None = None) -> web.Application:
    if source is None:
        source = _source_for(settings)
    extender = Extender(settings, source)
    # bodies are decompressed here (_decode), not by aiohttp: a body that does not match its Content-Encoding is
    # then a 400 with a message, and a compressed body is held to the same size limit once decompressed
    app = web.Application(client_max_size=settings.max_body_mib * 1024 * 1024, middlewares=[track_requests, _errors],
                          handler_args={"auto_decompress": False, "keepalive_timeout": settings.idle_timeout_s})
    app[EXTENDER] = extender
    app[IN_FLIGHT] = set()  # connections with a request in progress (serve.ConnectionCap keeps these open)
    app.router.add_post("/filter", _filter)
    app.router.add_post("/prioritize", _prioritize)
    app.router.add_post("/bind", _bind)
    app.router.add_post("/preempt", _preempt)
    app.router.add_post("/admit/pods", _admit_pods)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/inspect", _inspect)
    app.cleanup_ctx.append(_feed)
    if settings.probe_listen is not None:
        app.cleanup_ctx.append(_probes)
    if settings.admission_listen is not None:
        app.cleanup_ctx.append(_admission)
    return app


async def _side_listener(app: web.Application, address: str, routes, ssl_context=None) -> web.AppRunner:
    """A second listener over the same extender, serving only ``routes`` ((method, path, handler)), with the same
    timeouts and its own connection limit (``settings.side_max_connections``)."""
    extender = app[EXTENDER]
    settings = extender.settings
    side = web.Application(middlewares=[track_requests, _errors], client_max_size=settings.max_body_mib * 1024 * 1024,
                           handler_args={"keepalive_timeout": settings.idle_timeout_s})
    side[EXTENDER] = extender
    side[IN_FLIGHT] = set()
    for method, path, handler in routes:
        side.router.add_route(method, path, handler)
    runner = web.AppRunner(side, access_log=None)
    await runner.setup()
    host, _, port = address.rpartition(":")
    await CappedSite(runner, host.strip("[]"), int(port), limit=settings.side_max_connections,
                     on_refusal=lambda kind: extender.metrics.refused_connections.labels(kind).inc(),
                     ssl_context=ssl_context, handshake_timeout=settings.idle_timeout_s).start()
    return runner


async def _probes(app: web.Application) -> AsyncIterator[None]:
    """The probe listener (``--probe-listen``): health, readiness and metrics over plain HTTP, nothing else."""
    runner = await _side_listener(app, app[EXTENDER].settings.probe_listen, [
        ("GET", "/healthz", _healthz), ("GET", "/readyz", _readyz), ("GET", "/metrics", _metrics)])
    yield
    await runner.cleanup()


async def _admission(app: web.Application) -> AsyncIterator[None]:
    """The admission listener (``--admission-listen``): the webhook over HTTPS for the API server, and a probe."""
    settings = app[EXTENDER].settings
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(settings.admission_tls_cert), str(settings.admission_tls_key))
    runner = await _side_listener(app, settings.admission_listen, [
        ("POST", "/admit/pods", _admit_pods), ("GET", "/healthz", _healthz)], ssl_context=context)
    yield
    await runner.cleanup()


def _source_for(settings: ExtenderSettings) -> ClusterSource:
    if settings.cluster is not None:
        return StaticCluster.from_file(settings.cluster)
    from ..kube.live import LiveCluster  # the only place the Kubernetes client is needed

    return LiveCluster.connect(settings.kubeconfig)


async def _feed(app: web.Application) -> AsyncIterator[None]:
    """Run the cluster feed (list, then watch) for the app's lifetime; cancel and await it on shutdown."""
    extender = app[EXTENDER]
    task = asyncio.create_task(extender.source.run(extender), name="fracgpu-cluster-feed")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    await extender.source.close()


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def _error(message: str, status: int) -> web.Response:
    return _json(orjson.dumps({"Error": message}), status)


@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    verb = request.path.strip("/") or "root"
    metrics = request.app[EXTENDER].metrics
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except BadRequest as exc:
        status = 400
        return _error(f"{verb}: {exc}", 400)
    except web.HTTPRequestEntityTooLarge as exc:
        status = 413
        return _error(f"{verb}: request body too large ({exc.text}); raise max_body_mib if this is real", 413)
    except _ClientGone:
        status = 499  # as nginx counts a client that went away; the answer reaches nobody
        return _error(f"{verb}: the client closed the connection", 400)
    except web.HTTPException as exc:  # 404, 405 and friends: in the protocol's JSON too
        status = exc.status
        if status < 400:
            raise
        allowed = exc.headers.get("Allow")
        detail = f" (allowed: {allowed})" if allowed else ""
        return _error(f"{verb}: {exc.reason}: {request.method} {request.path[:200]}{detail}", status)
    except Exception as exc:  # a fault of ours: say so, keep serving
        log.exception("%s failed", verb)
        return _error(f"{verb}: internal error: {type(exc).__name__}: {exc}", 500)
    finally:
        if verb in ("filter", "prioritize", "bind", "preempt"):
            metrics.latency.labels(verb).observe(time.perf_counter() - start)
            metrics.requests.labels(verb, str(status)).inc()


_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _decompressed(body: bytes, encoding: str, limit: int) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in _WBITS:
        raise BadRequest(f"Content-Encoding {encoding!r} is not supported (gzip, deflate or none)")
    inflater = zlib.decompressobj(_WBITS[encoding])
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"body is not {encoding} data, as its Content-Encoding says: {exc}") from None
    if len(data) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(data))
    return data


class _ClientGone(Exception):
    """The client closed the connection before its body arrived: nobody is left to answer."""


async def _read_body(request: web.Request) -> bytes:
    """The request body, within the idle timeout: a body that never finishes would hold its connection for good.
    Until it has arrived the request is not busy: at the connection limit its connection may be closed for a new
    one (serve.ConnectionCap), so that bodies sent slowly cannot lock normal requests out."""
    timeout = request.app[EXTENDER].settings.idle_timeout_s
    in_flight, transport = request.app[IN_FLIGHT], request.transport
    in_flight.discard(transport)
    try:
        async with asyncio.timeout(timeout):  # no task of its own, unlike wait_for on 3.11
            return await request.read()
    except TimeoutError:
        raise BadRequest(f"the body did not arrive within {timeout:g} s (--idle-timeout-s)") from None
    except (ConnectionError, RuntimeError) as exc:  # aiohttp: "Connection closed." / "Connection lost"
        raise _ClientGone(str(exc)) from None
    finally:
        in_flight.add(transport)  # busy again until its answer is written (track_requests)


async def _decode(request: web.Request, model: type[WireModel]) -> WireModel:
    body = _decompressed(await _read_body(request), request.headers.get("Content-Encoding", ""),
                         request.client_max_size)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"body must be a JSON object ({model.__name__}), got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or model.__name__
        raise BadRequest(f"{model.__name__}.{where}: {first['msg']}") from None


async def _filter(request: web.Request) -> web.Response:
    args = await _decode(request, ExtenderArgs)
    result: ExtenderFilterResult = await request.app[EXTENDER].filter_fresh(args)
    return _json(result.dumps())


async def _prioritize(request: web.Request) -> web.Response:
    args = await _decode(request, ExtenderArgs)
    return _json(encode_priorities(request.app[EXTENDER].prioritize(args)))


async def _bind(request: web.Request) -> web.Response:
    args = await _decode(request, ExtenderBindingArgs)
    return _json((await request.app[EXTENDER].bind(args)).dumps())


async def _preempt(request: web.Request) -> web.Response:
    args = await _decode(request, ExtenderPreemptionArgs)
    return _json(request.app[EXTENDER].preempt(args).dumps())


async def _admit_pods(request: web.Request) -> web.Response:
    """A ``admission.k8s.io/v1`` AdmissionReview of a pod (mutating and validating: see core.admission)."""
    try:
        data = orjson.loads(await _read_body(request))
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    review_request = data.get("request") if isinstance(data, dict) else None
    if not isinstance(review_request, dict) or not isinstance(review_request.get("uid"), str):
        raise BadRequest("body must be an AdmissionReview (admission.k8s.io/v1) with request.uid")
    pod = review_request.get("object") or {}
    if not isinstance(pod, dict):
        raise BadRequest("request.object must be a Pod")
    extender = request.app[EXTENDER]
    settings = extender.settings
    user = ((review_request.get("userInfo") or {}).get("username")) or ""
    old = review_request.get("oldObject") if isinstance(review_request.get("oldObject"), dict) else None
    answer = review(pod, operation=str(review_request.get("operation")), user=str(user), old=old,
                    settings=extender.core, extender_user=settings.extender_user,
                    scheduler_name=settings.scheduler_name, runtime_class=settings.runtime_class,
                    sub_resource=str(review_request.get("subResource") or ""))
    response: dict = {"uid": review_request["uid"], "allowed": answer.allowed}
    if not answer.allowed:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": f"fracgpu: {answer.message}"}
    elif answer.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(answer.patch)).decode()
    return _json(orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                               "response": response}))


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _readyz(request: web.Request) -> web.Response:
    if request.app[EXTENDER].synced:
        return web.Response(text="ok")
    return web.Response(text="ledger not synced yet", status=503)


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[EXTENDER].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _inspect(request: web.Request) -> web.Response:
    extender = request.app[EXTENDER]
    node = request.query.get("node")
    if node is not None and extender.ledger.row_of(node) is None:
        reason = extender.ledger.problem(node) or "no GPU inventory known"
        return _error(f"inspect: unknown node {node!r}: {reason}", 404)
    return _json(orjson.dumps(extender.inspect(node)))
