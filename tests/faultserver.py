"""A real HTTP server on loopback (127.0.0.1, or another address given) that serves images
and every fault a crawl must survive.

It runs its own event loop in a thread, so synchronous tests (and crawler subprocesses)
can use it. Routes (NAME is a key of ``files``):

    /img/NAME                 the image, with ETag and Last-Modified; 304 on a match
    /slowimg/NAME             the image after ``image_delay`` seconds (for kill tests)
    /missing                  404
    /flaky/NAME               500 on the first request, then the image
    /ratelimited/NAME         429 with Retry-After: 1 on the first request, then the image
    /unavailable              503 every time
    /reset/NAME               the connection is reset before any answer
    /slow/NAME                headers and a few bytes, then a stall past any test timeout
    /huge                     an endless JPEG-looking body without Content-Length
    /declared-huge            a Content-Length over any test limit (body never sent)
    /html-as-jpeg             an HTML page served as image/jpeg
    /redirect/N/NAME          N redirects, then /img/NAME
    /loop/a, /loop/b          redirects to each other
    /private/NAME             the image, but robots.txt disallows /private/
                              (robots.txt answers with ``robots_status``; 302
                              redirects to /real-robots.txt)

``hits`` counts requests per path and query; ``times`` keeps their arrival times. Set
``image_status`` to make every /img/ request answer that status instead (a host that
goes bad between two crawls).
"""

import asyncio
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Self

from aiohttp import web

ROBOTS_TXT = "User-agent: *\nDisallow: /private/\n"
HTML_PAGE = b"<!doctype html><html><body>not an image</body></html>\n"
LAST_MODIFIED = "Wed, 21 Oct 2026 07:28:00 GMT"


class FaultServer:
    def __init__(
        self,
        files: Mapping[str, bytes],
        *,
        image_delay: float = 0.0,
        robots_status: int = 200,
        address: str = "127.0.0.1",
    ) -> None:
        self.files = dict(files)
        self.image_delay = image_delay
        self.robots_status = robots_status
        self.address = address
        self.image_status: int | None = None
        self.hits: Counter[str] = Counter()
        self.times: defaultdict[str, list[float]] = defaultdict(list)
        self.base = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._count])
        app.router.add_get("/robots.txt", self._robots)
        app.router.add_get("/real-robots.txt", self._real_robots)
        app.router.add_get("/img/{name}", self._image)
        app.router.add_get("/private/{name}", self._image)
        app.router.add_get("/slowimg/{name}", self._slow_image)
        app.router.add_get("/flaky/{name}", self._fail_first(500, {}))
        app.router.add_get("/ratelimited/{name}", self._fail_first(429, {"Retry-After": "1"}))
        app.router.add_get("/unavailable", self._unavailable)
        app.router.add_get("/reset/{name}", self._reset)
        app.router.add_get("/slow/{name}", self._stall)
        app.router.add_get("/chunked/{name}", self._chunked)
        app.router.add_get("/huge", self._endless)
        app.router.add_get("/declared-huge", self._declared_huge)
        app.router.add_get("/html-as-jpeg", self._html_as_jpeg)
        app.router.add_get("/redirect/{count}/{name}", self._redirect)
        app.router.add_get("/loop/{side}", self._loop_redirect)
        app.router.add_get("/bad-host-redirect/{kind}", self._bad_host_redirect)
        self._runner = web.AppRunner(
            app, shutdown_timeout=0.5, handler_cancellation=True, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.address, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base = f"http://{self.address}:{port}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _count(self, request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
        self.hits[request.path_qs] += 1
        self.times[request.path_qs].append(time.monotonic())
        return await handler(request)

    async def _robots(self, _request: web.Request) -> web.Response:
        if self.robots_status == 302:
            raise web.HTTPFound("/real-robots.txt")
        return web.Response(status=self.robots_status, text=ROBOTS_TXT)

    async def _real_robots(self, _request: web.Request) -> web.Response:
        return web.Response(text=ROBOTS_TXT)

    async def _unavailable(self, _request: web.Request) -> web.Response:
        return web.Response(status=503)

    async def _image(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if self.image_status is not None:
            return web.Response(status=self.image_status)
        if name not in self.files:
            raise web.HTTPNotFound()
        etag = f'"{name}-v1"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        headers = {"ETag": etag, "Last-Modified": LAST_MODIFIED}
        return web.Response(body=self.files[name], content_type="image/jpeg", headers=headers)

    async def _slow_image(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.image_delay)
        return await self._image(request)

    def _fail_first(self, status: int, headers: dict[str, str]) -> web.RequestHandler:
        async def handler(request: web.Request) -> web.Response:
            if self.hits[request.path_qs] == 1:
                return web.Response(status=status, headers=headers)
            return await self._image(request)

        return handler

    async def _reset(self, request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()  # RST instead of an answer
        raise asyncio.CancelledError

    async def _stall(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await response.prepare(request)
        await response.write(self.files[request.match_info["name"]][:100])
        await asyncio.sleep(3600)
        return response

    async def _chunked(self, request: web.Request) -> web.StreamResponse:
        """The file in HTTP chunks of 1,000 bytes, with no Content-Length."""
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        body = self.files[request.match_info["name"]]
        for start in range(0, len(body), 1000):
            await response.write(body[start : start + 1000])
        await response.write_eof()
        return response

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"\xff\xd8\xff\xe0" + b"\0" * 65532)
        while True:  # ends when the client hangs up
            await response.write(b"\0" * 65536)

    async def _declared_huge(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.content_length = 10 * 1024**3
        await response.prepare(request)
        await response.write(b"\xff\xd8\xff\xe0")
        await asyncio.sleep(3600)
        return response

    async def _html_as_jpeg(self, _request: web.Request) -> web.Response:
        return web.Response(body=HTML_PAGE, content_type="image/jpeg")

    async def _redirect(self, request: web.Request) -> web.Response:
        count = int(request.match_info["count"])
        name = request.match_info["name"]
        target = f"/redirect/{count - 1}/{name}" if count > 1 else f"/img/{name}"
        raise web.HTTPFound(target)

    async def _bad_host_redirect(self, request: web.Request) -> web.Response:
        # Host names no resolver can look up (so never looked up): invalid punycode, an
        # empty label, a space
        hosts = {
            "punycode": "xn--a.example",
            "empty-label": ".example",
            "space": "a b.example",
            "broken": "[::1]:80x@",  # yarl cannot even split it
        }
        location = f"http://{hosts[request.match_info['kind']]}/a.jpg"
        return web.Response(status=302, headers={"Location": location})  # HTTPFound parses it

    async def _loop_redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop/b" if request.match_info["side"] == "a" else "/loop/a")
