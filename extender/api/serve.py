"""Serving the app: one listener with a cap on open connections, and a clean stop on SIGTERM or SIGINT.

At the cap a new connection takes the place of the oldest connection that has no request in progress (idle
between requests, or still sending its headers); only when every connection is busy with a request is the new
one closed at once. So clients that open connections and send nothing cannot lock kube-scheduler out, and the
process never reaches its file limit (accept() failing with EMFILE, a traceback per attempt). Each kind of
refusal is logged once, with a count in the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl

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
    """The listener's protocol factory: aiohttp's own, held to ``limit`` open connections (see the module)."""

    def __init__(self, server: web.Server, limit: int, in_flight: set, on_refusal) -> None:
        self.server, self.limit, self.in_flight, self.on_refusal = server, limit, in_flight, on_refusal
        self._logged: set[str] = set()

    def __call__(self) -> asyncio.BaseProtocol:
        # oldest first; one already closing (by us, a moment ago) no longer counts
        connections = [h for h in self.server.connections if h.transport is not None and not h.transport.is_closing()]
        if len(connections) >= self.limit:
            idle = next((h for h in connections if h.transport not in self.in_flight), None)
            if idle is None:
                self._refused("busy")
                return _Refuse()
            self._refused("idle-closed")
            idle.force_close()
        return self.server()

    def _refused(self, kind: str) -> None:
        self.on_refusal(kind)
        if kind not in self._logged:
            self._logged.add(kind)
            what = ("every connection busy: a new one was closed" if kind == "busy"
                    else "the oldest idle connection was closed for a new one")
            log.warning("connection limit (%d) reached: %s (logged once; counted in "
                        "fracgpu_extender_connections_refused_total)", self.limit, what)


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class CappedSite(web.TCPSite):
    def __init__(self, runner: web.AppRunner, host: str, port: int, *, limit: int, on_refusal,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self.limit, self.on_refusal = limit, on_refusal

    async def start(self) -> None:
        await web.BaseSite.start(self)  # what TCPSite.start does, with the capped protocol factory
        server = self._runner.server
        assert server is not None
        in_flight = self._runner.app[IN_FLIGHT]  # type: ignore[attr-defined]
        cap = ConnectionCap(server, self.limit, in_flight, self.on_refusal)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(cap, self._host, self._port, ssl=self._ssl_context,
                                                backlog=self._backlog)


async def serve(app: web.Application, host: str, port: int, *, limit: int, on_refusal,
                ssl_context: ssl.SSLContext | None = None) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then stop cleanly."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await CappedSite(runner, host, port, limit=limit, on_refusal=on_refusal, ssl_context=ssl_context).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
