"""Serving the app: listeners with a cap on open connections, and a clean stop on SIGTERM or SIGINT.

At the cap a new connection takes the place of a connection that has no request in progress: the oldest one
still in its TLS handshake, else the oldest one idle between requests or still sending its headers or its body
(see ``app._read_body``). Only when every connection has a request whose handler runs is the new one closed at
once. So clients that open connections and send nothing, or send slowly, cannot lock kube-scheduler out, and the
process never reaches its file limit (accept() failing with EMFILE, a traceback per attempt). Each kind of
refusal is logged once, with a count in the metrics.

TLS is done here, not by ``create_server(ssl=...)``: a connection in its handshake is then counted and can be
closed, and the handshake is held to a timeout (the idle timeout) instead of asyncio's 60 s.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from asyncio import sslproto

from aiohttp import web

log = logging.getLogger("fracgpu.extender")

IN_FLIGHT = web.AppKey("in_flight", set)


@web.middleware
async def track_requests(request: web.Request, handler) -> web.StreamResponse:
    """Mark the connection busy while one of its requests is handled."""
    in_flight = request.app[IN_FLIGHT]
    transport = request.transport
    in_flight.add(transport)
    try:
        return await handler(request)
    finally:
        in_flight.discard(transport)


class ConnectionCap:
    """The listener's protocol factory: aiohttp's own, held to ``limit`` open connections (see the module), over
    TLS when ``ssl_context`` is given."""

    def __init__(self, server: web.Server, limit: int, in_flight: set, on_refusal, *,
                 ssl_context: ssl.SSLContext | None = None, handshake_timeout: float | None = None) -> None:
        self.server, self.limit, self.in_flight, self.on_refusal = server, limit, in_flight, on_refusal
        self.ssl_context, self.handshake_timeout = ssl_context, handshake_timeout
        self.handshakes: list[_Handshake] = []  # TLS connections still in their handshake, oldest first
        self._logged: set[str] = set()

    def __call__(self) -> asyncio.BaseProtocol:
        self.handshakes = [h for h in self.handshakes if h.in_progress()]
        # oldest first; one already closing (by us, a moment ago) no longer counts
        connections = [h for h in self.server.connections if h.transport is not None and not h.transport.is_closing()]
        if len(connections) + len(self.handshakes) >= self.limit:
            if self.handshakes:
                self._refused("handshake-closed")
                self.handshakes.pop(0).abort()
            else:
                idle = next((h for h in connections if h.transport not in self.in_flight), None)
                if idle is None:
                    self._refused("busy")
                    return _Refuse()
                self._refused("idle-closed")
                idle.force_close()
        handler = self.server()
        if self.ssl_context is None:
            return handler
        handshake = _Handshake(handler, self.ssl_context, self.handshake_timeout)
        self.handshakes.append(handshake)
        return handshake

    def _refused(self, kind: str) -> None:
        self.on_refusal(kind)
        if kind not in self._logged:
            self._logged.add(kind)
            what = {"busy": "every connection busy: a new one was closed",
                    "idle-closed": "the oldest idle connection was closed for a new one",
                    "handshake-closed": "the oldest connection still in its TLS handshake was closed for a new one",
                    }[kind]
            log.warning("connection limit (%d) reached: %s (logged once; counted in "
                        "fracgpu_extender_connections_refused_total)", self.limit, what)


class _Handshake(sslproto.SSLProtocol):
    """A TLS connection made as ``create_server(ssl=...)`` makes it, but here, where the cap sees it: counted,
    and closed if need be, while its handshake is under way. ``handler`` (aiohttp's) takes over once it is done.
    (``asyncio.sslproto`` is not public API; its ``SSLProtocol`` has taken these arguments since Python 3.11, and
    the TLS tests in test_hostile.py and test_cli.py fail if that changes.)"""

    def __init__(self, handler: asyncio.BaseProtocol, context: ssl.SSLContext, timeout: float | None) -> None:
        # the shutdown timeout too: a connection closed for a newer one (no longer counted) holds its socket
        # through the TLS close for at most this long, not asyncio's default 30 s
        super().__init__(asyncio.get_running_loop(), handler, context, None, server_side=True,
                         ssl_handshake_timeout=timeout, ssl_shutdown_timeout=timeout)
        self.handler = handler
        self.raw: asyncio.BaseTransport | None = None  # the TCP connection
        self.aborted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport
        super().connection_made(transport)
        if self.aborted:  # closed for a newer connection before asyncio gave it its socket
            transport.abort()

    def in_progress(self) -> bool:
        closed = self.aborted or (self.raw is not None and self.raw.is_closing())
        return not closed and self.handler.transport is None  # type: ignore[attr-defined]

    def abort(self) -> None:
        self.aborted = True
        if self.raw is not None:
            self.raw.abort()


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class CappedSite(web.TCPSite):
    def __init__(self, runner: web.AppRunner, host: str, port: int, *, limit: int, on_refusal,
                 ssl_context: ssl.SSLContext | None = None, handshake_timeout: float | None = None) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self.limit, self.on_refusal, self.handshake_timeout = limit, on_refusal, handshake_timeout
        self.cap: ConnectionCap | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)  # what TCPSite.start does, with the capped protocol factory
        server = self._runner.server
        assert server is not None
        in_flight = self._runner.app[IN_FLIGHT]  # type: ignore[attr-defined]
        self.cap = ConnectionCap(server, self.limit, in_flight, self.on_refusal, ssl_context=self._ssl_context,
                                 handshake_timeout=self.handshake_timeout)
        loop = asyncio.get_running_loop()
        # no ssl= here: the cap does TLS itself (see the module)
        self._server = await loop.create_server(self.cap, self._host, self._port, backlog=self._backlog)

    async def stop(self) -> None:
        for handshake in self.cap.handshakes if self.cap is not None else ():
            handshake.abort()
        await super().stop()


async def serve(app: web.Application, host: str, port: int, *, limit: int, on_refusal,
                ssl_context: ssl.SSLContext | None = None, handshake_timeout: float | None = None) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then stop cleanly."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await CappedSite(runner, host, port, limit=limit, on_refusal=on_refusal, ssl_context=ssl_context,
                     handshake_timeout=handshake_timeout).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
