"""The HTTP API (aiohttp, in the controller's event loop; signals stay the controller's).

Routes: GET /status, GET /openapi.json, POST /config and POST /MODULE
(eCapture's per-module paths), GET /events (WebSocket), GET / (the live page,
static files of this package: no CDN, no build step).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from ecapture.errors import EcaptureError

from .config_request import Parse, config_from_body, module_parsers
from .controller import Controller, ReloadError
from .openapi import openapi_document
from .output import EventFilter, Subscriber

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATIC = resources.files("ecapture.api") / "static"
MAX_BODY_BYTES = 64 * 1024
CONTROLLER: web.AppKey[Controller] = web.AppKey("controller", Controller)


def _error(code: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=code)


class ApiServer:
    """The aiohttp application and its listening site."""

    def __init__(
        self, controller: Controller, parser: argparse.ArgumentParser, parse: Parse,
        *, host: str, port: int, token: str | None,
    ) -> None:
        self.controller = controller
        self.parse = parse
        self.host, self.port = host, port
        self.token = token
        self.modules = module_parsers(parser)
        self.document = openapi_document(self.modules)
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._authenticate], client_max_size=MAX_BODY_BYTES)
        app[CONTROLLER] = self.controller
        app.router.add_get("/status", self.get_status)
        app.router.add_get("/openapi.json", self.get_openapi)
        app.router.add_post("/config", self.post_config)
        for name in self.modules:
            app.router.add_post(f"/{name}", self._module_route(name))
        app.router.add_get("/events", self.get_events)
        app.router.add_get("/", self.get_page)
        app.router.add_static("/static/", str(STATIC), follow_symlinks=False)
        return app

    async def start(self) -> ApiServer:
        runner = web.AppRunner(self.application(), handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise EcaptureError(
                f"--listen {self.host}:{self.port}: {error.strerror or error}") from error
        self._runner = runner
        sockets = getattr(site._server, "sockets", None) or ()
        if sockets:  # the port the OS gave, for --listen HOST:0
            self.port = sockets[0].getsockname()[1]
        log.info("API listening on http://%s:%d/ (%s)", self.host, self.port,
                 "bearer token required" if self.token else "no token")
        return self

    async def close(self) -> None:
        for socket in list(self._sockets):
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ----- middleware -------------------------------------------------------------------

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token:
            header = request.headers.get("Authorization", "")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    given.strip().encode(), self.token.encode()):
                response = _error(401, "missing or wrong bearer token")
                response.headers["WWW-Authenticate"] = 'Bearer realm="ecapture"'
                return response
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status >= 400 and error.content_type != "application/json":
                return _error(error.status, error.reason)
            raise

    # ----- handlers ---------------------------------------------------------------------

    async def get_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.controller.status())

    async def get_openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.document)

    async def get_page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(str(STATIC / "index.html"),
                                headers={"Cache-Control": "no-store"})

    async def post_config(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        module = body.get("module")
        if not isinstance(module, str) or not module:
            return _error(400, "module: expected the name of a capture module, e.g. \"tls\"")
        return await self._reload(module, body)

    def _module_route(self, name: str) -> Handler:
        async def post_module(request: web.Request) -> web.Response:
            body = await self._body(request)
            if isinstance(body, web.Response):
                return body
            if "module" in body and body["module"] != name:
                return _error(400, f"module: this path is /{name}, the body says "
                                   f"{body['module']!r}")
            return await self._reload(name, body)
        return post_module

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        raw = await request.read()
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError as error:
            return _error(400, f"malformed JSON: {error}")
        if not isinstance(body, dict):
            return _error(400, f"expected a JSON object, got {type(body).__name__}")
        return body

    async def _reload(self, module: str, body: dict[str, Any]) -> web.Response:
        controller = self.controller
        if module not in self.modules:
            return _error(400, f"module: unknown capture module {module!r}; known: "
                               f"{', '.join(sorted(self.modules))}")
        switch = body.get("switch", False)
        if not isinstance(switch, bool):
            return _error(400, "switch: expected true or false")
        try:
            cls, config = config_from_body(self.parse, module, body, controller.config)
        except EcaptureError as error:  # ConfigError, an unknown module (RegistryError)
            return _error(400, str(error))
        if cls.name != controller.module_name and not switch:
            return _error(409, f"the running module is {controller.module_name}; a "
                               f"{cls.name} configuration needs \"switch\": true")
        try:
            status = await controller.reload(cls, config)
        except ReloadError as error:
            return _error(error.status, str(error), restored=error.restored,
                          status=controller.status() if error.restored else None)
        return web.json_response(status)

    async def get_events(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        pid: int | None = None
        if "pid" in query:
            try:
                pid = int(query["pid"])
            except ValueError:
                return _error(400, f"pid: expected a number, got {query['pid']!r}")
            if pid < 0:
                return _error(400, f"pid: expected a number >= 0, got {pid}")
        types = frozenset(t for t in query.get("type", "").split(",") if t)
        event_filter = EventFilter(module=query.get("module") or None, pid=pid, types=types)
        socket = web.WebSocketResponse(heartbeat=30)
        if not socket.can_prepare(request).ok:
            return _error(400, "GET /events is a WebSocket: send the upgrade headers")
        await socket.prepare(request)
        loop = asyncio.get_running_loop()
        more = asyncio.Event()
        woken = [False]

        def wake() -> None:  # from the capture thread
            if not woken[0]:
                woken[0] = True
                loop.call_soon_threadsafe(more.set)

        subscriber = Subscriber(event_filter, wake)
        tap = self.controller.output.tap if self.controller.output else None
        if tap is None:
            await socket.close()
            return socket
        self._sockets.add(socket)
        tap.subscribe(subscriber)
        reader = asyncio.ensure_future(self._read_until_closed(socket, more))
        try:
            while not socket.closed:
                await more.wait()
                more.clear()
                woken[0] = False
                for line in subscriber.take(tap.module, time.time_ns()):
                    if socket.closed:
                        break
                    await socket.send_str(line.decode())
        except (ConnectionError, RuntimeError):  # the client went away mid-send
            pass
        finally:
            tap.unsubscribe(subscriber)
            self._sockets.discard(socket)
            reader.cancel()
        return socket

    @staticmethod
    async def _read_until_closed(socket: web.WebSocketResponse, more: asyncio.Event) -> None:
        async for message in socket:
            if message.type is WSMsgType.ERROR:
                break
        more.set()  # wakes the sender, which sees the socket closed
