"""A TCP proxy on 127.0.0.1 in front of the PostgreSQL server, that a test can cut: every
connection through it drops at once and new ones are refused until it is restored. To a
client that is what a server restart or a failover looks like, without restarting the
server everyone else on the machine uses.

It runs its own event loop in a thread, so synchronous tests and crawler subprocesses can
use it. ``url`` is the database URL to give them.
"""

import asyncio
import contextlib
import threading
from typing import Self

import sqlalchemy as sa


class DatabaseProxy:
    def __init__(self, database_url: str) -> None:
        target = sa.make_url(database_url)
        self._target = (target.host or "127.0.0.1", target.port or 5432)
        self._database_url = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        proxied = self._database_url.set(host="127.0.0.1", port=self.port)
        return proxied.render_as_string(hide_password=False)

    def __enter__(self) -> Self:
        self._thread.start()
        self._call(self._listen(0))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self._call(self._cut())

    def restore(self) -> None:
        """Accept connections again, on the same port."""
        self._call(self._listen(self.port))

    def _call(self, work: object) -> None:
        asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=10)  # type: ignore[arg-type]

    async def _listen(self, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._pipes):
            with contextlib.suppress(OSError):
                writer.transport.abort()
        self._pipes.clear()

    async def _serve(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        try:
            server_reader, server = await asyncio.open_connection(*self._target)
        except OSError:
            client.transport.abort()
            return
        self._pipes |= {client, server}
        await asyncio.gather(self._pipe(client_reader, server), self._pipe(server_reader, client))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._pipes.discard(writer)
            writer.transport.abort()
