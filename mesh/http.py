"""The HTTP side port of a service: Prometheus `/metrics`, plus routes a service adds (auth's JWKS)."""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from mesh.metrics import exposition


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = exposition(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


class HttpSidePort:
    """An aiohttp server sharing the service's event loop (no threads, no signal handlers of its own)."""

    def __init__(self, host: str, port: int, routes: Iterable[web.RouteDef] = ()) -> None:
        app = web.Application()
        app.router.add_get("/metrics", _metrics)
        app.add_routes(list(routes))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._host = host
        self._port = port
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        await self._runner.cleanup()
