"""What the tests of ``crawler serve`` share: real servers on 127.0.0.1, a DNS table that asks
no DNS server, small generated images and test settings with short timeouts."""

import asyncio
import io
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from threading import Thread

import numpy as np
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from PIL import Image
from yarl import URL

from crawler.config import (
    CrawlSettings,
    DatabaseSettings,
    RetrySettings,
    ServeSettings,
    Settings,
    TimeoutSettings,
)

MAX_SIZE = 200_000


class StaticResolver(AbstractResolver):
    """Answers from a fixed table of host names, so tests never send a DNS query."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self._table = table

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self._table:
            raise OSError(socket.EAI_NONAME, f"{host}: not in the test's host table")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self._table[host]
        ]

    async def close(self) -> None:
        return None


TEST_HOSTS = StaticResolver({name: ["127.0.0.1", "::1"] for name in ("localhost", "localhost.")})


def make_jpeg(seed: int, touch: float = 0, size: tuple[int, int] = (96, 64)) -> bytes:
    """A small photo-like JPEG of soft blobs; the same seed with a ``touch`` (an extra blob of
    that brightness) gives a near duplicate, a few pHash bits away."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    scale = (width / 96) ** 2  # blobs grow with the image

    def blob(strength: float, cx: float, cy: float, spread: float) -> np.ndarray:
        return strength * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (spread * scale))

    pixels = sum(
        blob(
            rng.uniform(40, 120),
            rng.uniform(0, width),
            rng.uniform(0, height),
            rng.uniform(80, 600),
        )
        for _ in range(6)
    )
    pixels = pixels + blob(touch, 0.3 * width, 0.6 * height, 0.02 * 96 * 96)
    grey = np.clip(pixels + 40, 0, 255).astype(np.uint8)
    rgb = np.stack([grey, np.roll(grey, 7, axis=1), grey[::-1]], axis=-1)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", quality=90)
    return out.getvalue()


def api_settings(
    database_url: str,
    *,
    allow_hosts: tuple[str, ...] = (),
    api_keys: tuple[str, ...] = (),
    rate_limit_per_minute: int = 10_000,
    max_upstream_fetches: int = 4,
    extract_timeout: float = 60.0,
    **serve: object,
) -> Settings:
    """Test settings: short timeouts, small images; ``serve`` sets more serve settings
    (``port=0`` listens on a free port)."""
    return Settings(
        database=DatabaseSettings(url=database_url),
        crawl=CrawlSettings(
            max_size=MAX_SIZE,
            max_redirects=3,
            timeouts=TimeoutSettings(connect=2.0, read=0.5, total=3.0),
            retries=RetrySettings(attempts=1),
            extract_timeout=extract_timeout,
        ),
        serve=ServeSettings(
            allow_hosts=allow_hosts,
            api_keys=api_keys,
            rate_limit_per_minute=rate_limit_per_minute,
            max_upstream_fetches=max_upstream_fetches,
            **serve,  # type: ignore[arg-type]
        ),
    )


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[URL]:
    """Run ``app`` on 127.0.0.1 on a free port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield URL(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


@contextmanager
def serving_in_thread(app: web.Application) -> Iterator[URL]:
    """Run ``app`` on 127.0.0.1 in an event loop on a thread of its own, for synchronous
    clients (schemathesis, the browser test)."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield URL(f"http://127.0.0.1:{port}")
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


class UpstreamServer:
    """A loopback image server with faults, counting every request it receives by path."""

    def __init__(self, images: dict[str, bytes]) -> None:
        self.images = images
        self.requests: Counter[str] = Counter()
        self.in_flight = 0
        self.most_in_flight = 0
        self.app = web.Application(middlewares=[self._count])
        self.app.router.add_get("/img/{name}", self._image)
        self.app.router.add_get("/redirect", self._redirect)
        self.app.router.add_get("/page.html", self._html)
        self.app.router.add_get("/huge.jpg", self._huge)
        self.app.router.add_get("/broken.jpg", self._broken)
        self.app.router.add_get("/slow.jpg", self._slow)
        self.app.router.add_get("/fail.jpg", self._fail)
        self.app.router.add_get("/held/{name}", self._held)

    @web.middleware
    async def _count(self, request: web.Request, handler: object) -> web.StreamResponse:
        self.requests[request.path] += 1
        return await handler(request)  # type: ignore[operator]

    async def _image(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.images:
            raise web.HTTPNotFound()
        return web.Response(body=self.images[name], content_type="image/jpeg")

    async def _held(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.2)
            return await self._image(request)
        finally:
            self.in_flight -= 1

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def _html(self, request: web.Request) -> web.Response:
        page = "<html><body>not an image</body></html>"
        return web.Response(text=page, content_type="image/jpeg")

    async def _huge(self, request: web.Request) -> web.Response:
        return web.Response(body=b"\xff\xd8\xff\xe0" + bytes(MAX_SIZE), content_type="image/jpeg")

    async def _broken(self, request: web.Request) -> web.Response:
        return web.Response(body=b"\xff\xd8\xff\xe0" + b"\x13" * 500, content_type="image/jpeg")

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await response.prepare(request)
        await response.write(b"\xff\xd8\xff\xe0")
        await asyncio.sleep(1.5)  # past the test read timeout of 0.5 s
        return response

    async def _fail(self, request: web.Request) -> web.Response:
        raise web.HTTPInternalServerError()
