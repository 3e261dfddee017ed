"""The HTTP API's connections: how many may be open, how long one may wait without a
request in progress, and what a malformed request or a refused connection gets.

aiohttp's server alone would keep a slow client's connection for as long as it trickles
bytes, accept connections until the process runs out of descriptors (and then log a
traceback for every failed accept), and answer a malformed request with plain text and a
traceback in the log. Here:

- a connection has ``serve.header_timeout`` seconds without a request in progress (from
  connecting, or from its previous answer) to send a whole request line and headers; an
  idle keep-alive connection is closed after the same time;
- connections are accepted one at a time, and at most ``serve.max_connections`` are open,
  lowered to what the descriptor limit leaves (``connection_limits``): past it the
  connection that has waited longest without a request in progress is closed to make
  room, or, when every one has a request running, the new one is answered 503 and closed;
- a malformed request (a request line or header over 8 KB, a bad method, bad syntax) gets
  the API's JSON error with its status, and each of these events is one log line.
"""

import asyncio
import logging
import os
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from yarl import URL

from crawler.config import ServeSettings
from crawler.errors import ConfigError

log = logging.getLogger(__name__)

# Descriptors kept free for everything but client connections: the catalogue's connection
# pool, the extraction processes' sockets and memory files, DNS, static files, logs...
RESERVED_DESCRIPTORS: Final = 64
DESCRIPTORS_PER_UPSTREAM_FETCH: Final = 4  # its socket, its body's memory file, the extraction
MIN_CONNECTIONS: Final = 16
BACKLOG: Final = 1024  # connections the kernel holds until they are accepted (a burst)
ACCEPT_RETRY_SECONDS: Final = 0.1
LINGER_SECONDS: Final = 1.0  # how long an unread request body is drained after the answer
SHOWN_PROBLEM_CHARACTERS: Final = 200

ErrorResponse = Callable[[int, str, dict[str, str]], web.Response]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout: float


def connection_limits(serve: ServeSettings) -> ConnectionLimits:
    """The limits to serve with: ``serve.max_connections``, lowered to what the descriptor
    limit (``ulimit -n``) leaves once the server's other descriptors are counted."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = serve.max_connections
    if soft != resource.RLIM_INFINITY:
        room = soft - _open_descriptors() - RESERVED_DESCRIPTORS
        room -= DESCRIPTORS_PER_UPSTREAM_FETCH * serve.max_upstream_fetches
        if room < MIN_CONNECTIONS:
            raise ConfigError(
                f"serve.max_connections: the descriptor limit ({soft}, ulimit -n) leaves room "
                f"for {max(room, 0)} connections; raise it, or lower serve.max_upstream_fetches"
            )
        if wanted > room:
            log.warning(
                "serving at most %d connections, not %d (serve.max_connections): the "
                "descriptor limit is %d (ulimit -n)",
                room,
                wanted,
                soft,
            )
            wanted = room
    return ConnectionLimits(wanted, serve.header_timeout)


def _open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc: count the usual three
        return 3


@web.middleware
async def track_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Mark the request's connection busy while its handler runs: a connection with a
    request in progress is never closed for waiting."""
    connection = request.protocol
    if not isinstance(connection, _Connection):  # served by a plain aiohttp site
        return await handler(request)
    connection.busy = True
    try:
        return await handler(request)
    finally:
        connection.busy = False
        connection.waiting_since = time.monotonic()
        connection.receiving = False


class _Connection(RequestHandler):
    """aiohttp's connection, which tells the guard when it opens and closes, notes when a
    request's bytes arrive, and answers a malformed request with the API's JSON error."""

    def __init__(self, guard: "_Guard", manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.guard = guard
        self.busy = False
        self.receiving = False  # bytes of a request that has not started came in
        self.waiting_since = time.monotonic()
        self.peer = "unknown"
        self.refused = False  # answered 503 at once: what it sends is not read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else "unknown"
        super().connection_made(transport)
        self.guard.opened(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if not self.busy:
            self.receiving = True
        super().data_received(data)

    def refuse(self, answer: bytes) -> None:
        """Send ``answer`` and close, reading nothing: the end of the output first, and the
        socket a moment later, since closing it with the client's request unread would
        reset the connection, and the answer with it."""
        self.refused = True
        if self.transport is None:
            return
        self.transport.write(answer)
        self.transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, self.force_close)

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("internal error on a request from %s", self.peer, exc_info=exc)
            problem = "internal error; the server log has the details"
        else:
            problem = self._problem(exc, message)
            log.warning("malformed request from %s: %d, %s", self.peer, status, problem)
        if request.writer.output_size > 0:  # as aiohttp: an answer is on its way already
            raise ConnectionError("an answer was sent already; the connection is closed")
        response = self.guard.error_response(status, problem, {})
        response.force_close()
        return response

    def _problem(self, exc: BaseException | None, message: str | None) -> str:
        if isinstance(exc, LineTooLong):
            return f"a request line or header over {self.max_line_size} bytes"
        if isinstance(exc, HttpProcessingError) and exc.message:
            message = exc.message
        text = " ".join(str(message or exc or "malformed request").split())
        return f"malformed request: {text[:SHOWN_PROBLEM_CHARACTERS]}"


class _Guard:
    """The open connections of one site, and the limits they are held to."""

    def __init__(
        self,
        server: web.Server,
        limits: ConnectionLimits,
        error_response: ErrorResponse,
        handler_options: dict[str, Any],
    ) -> None:
        self._server = server
        self._limits = limits
        self.error_response = error_response
        self._handler_options = handler_options
        self._open: set[_Connection] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def protocol(self) -> _Connection:
        """A new connection (the protocol factory of ``loop.create_server``)."""
        return _Connection(self, self._server, **self._handler_options)

    def opened(self, connection: _Connection) -> None:
        self._open.add(connection)
        if len(self._open) > self._limits.max_connections:  # no room was made: all busy
            log.warning(
                "refused a connection from %s: %d connections open, every one with a "
                "request running (serve.max_connections)",
                connection.peer,
                self._limits.max_connections,
            )
            self._refuse(connection)

    def _make_room(self) -> None:
        """At the limit, close the connection that has waited longest without a request in
        progress, before the one just accepted is served."""
        if len(self._open) < self._limits.max_connections:
            return
        waiting = [c for c in self._open if not c.busy]
        waiting = [c for c in waiting if not c.refused] or waiting
        if not waiting:
            return
        oldest = min(waiting, key=lambda c: c.waiting_since)
        log.warning(
            "closed the connection from %s, %.1f s without a request, to make room: "
            "%d connections open (serve.max_connections)",
            oldest.peer,
            time.monotonic() - oldest.waiting_since,
            self._limits.max_connections,
        )
        oldest.force_close()
        self._open.discard(oldest)

    async def accept(self, listener: socket.socket) -> None:
        """Accept connections on ``listener`` one at a time, making room for each: a closed
        connection's descriptor is free again before the next is accepted, so the process
        never runs out of them (asyncio's own accepting takes a whole backlog at once, and
        pauses for a second when that fails)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _address = await loop.sock_accept(listener)
            except OSError as exc:  # out of descriptors or memory, or a client gone already
                log.warning("could not accept a connection: %s", exc)
                await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            self._make_room()
            try:
                await loop.connect_accepted_socket(self.protocol, client)
            except OSError as exc:
                log.warning("could not serve a connection: %s", exc)
                client.close()

    def closed(self, connection: _Connection) -> None:
        self._open.discard(connection)

    def _refuse(self, connection: _Connection) -> None:
        """Answer 503 before reading anything, and close."""
        response = self.error_response(
            503,
            f"the server has {self._limits.max_connections} connections open; try again",
            {hdrs.RETRY_AFTER: "1"},
        )
        assert response.body is not None and isinstance(response.body, bytes)
        head = [f"HTTP/1.1 {response.status} {response.reason}"]
        head += [f"{name}: {value}" for name, value in response.headers.items()]
        head += [f"Content-Length: {len(response.body)}", "Connection: close", "", ""]
        connection.refuse("\r\n".join(head).encode() + response.body)

    def start(self, listeners: list[socket.socket]) -> None:
        self._tasks = [asyncio.create_task(self.accept(listener)) for listener in listeners]
        self._tasks.append(asyncio.create_task(self._sweep()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _sweep(self) -> None:
        """Close the connections that waited too long without a request in progress."""
        timeout = self._limits.header_timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = time.monotonic()
            for connection in [c for c in self._open if not c.busy]:
                waited = now - connection.waiting_since
                if waited <= timeout:
                    continue
                if connection.receiving:
                    log.warning(
                        "closed the connection from %s: no whole request line and headers "
                        "within %g s (serve.header_timeout)",
                        connection.peer,
                        timeout,
                    )
                else:
                    log.debug("closed the idle connection from %s", connection.peer)
                connection.force_close()
                self._open.discard(connection)


class GuardedSite(web.BaseSite):
    """A TCP site whose connections are held to ``limits`` (see the module's docstring)."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        limits: ConnectionLimits,
        error_response: ErrorResponse,
        access_log: logging.Logger | None = None,
    ) -> None:
        super().__init__(runner, backlog=BACKLOG)
        assert runner.server is not None, "set the runner up first"
        self._host = host
        self._port = port
        self._listeners: list[socket.socket] = []
        self._guard = _Guard(
            runner.server,
            limits,
            error_response,
            {
                "loop": asyncio.get_running_loop(),
                # aiohttp's own idle timer only backs up the guard's, which logs
                "keepalive_timeout": 2 * limits.header_timeout + 1,
                "lingering_time": LINGER_SECONDS,
                "access_log": access_log,
            },
        )

    @property
    def name(self) -> str:
        return self.url

    @property
    def url(self) -> str:
        """The base URL it listens on, with the port it was given (if it asked for 0)."""
        port = self._listeners[0].getsockname()[1] if self._listeners else self._port
        return str(URL.build(scheme="http", host=self._host, port=port, path="/"))

    async def start(self) -> None:
        await super().start()
        self._listeners = await _listen(self._host, self._port, self._backlog)
        self._guard.start(self._listeners)

    async def stop(self) -> None:
        await self._guard.stop()
        for listener in self._listeners:
            listener.close()
        await super().stop()


async def _listen(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets on every address ``host`` names (as ``loop.create_server``)."""
    loop = asyncio.get_running_loop()
    addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    try:
        for family, kind, protocol, _name, address in dict.fromkeys(addresses):
            listener = socket.socket(family, kind, protocol)
            listeners.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(listeners) > 1:  # one free port for every address
                address = (address[0], listeners[0].getsockname()[1], *address[2:])
            listener.bind(address)
            listener.listen(backlog)
            listener.setblocking(False)
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners
