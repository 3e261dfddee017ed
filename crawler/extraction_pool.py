"""The processes that decode and hash images for the crawl, off the event loop.

Each process has its own socket to the crawler and two memory files (memfd), both sides
mapping them. The crawler copies a downloaded body into a free file and sends the process
a small request naming it; the process copies the body out, extracts, and answers with the
pickled outcome. A process holds at most two requests, so the next body is ready when it
finishes one. ProcessPoolExecutor pickled every body through a pipe instead (several
copies, 64 KB writes with wake-ups, two helper threads): ~2 ms of CPU per photo.

The sockets and memory files are anonymous: nothing is left behind, even by a kill -9. A
process exits when its socket closes (the crawler is done, or dead), after the image it is
on, and ignores Ctrl-C: the crawler decides how its processes stop. When one dies, the
image it was on fails with ``ExtractionProcessDied``, the images queued behind it go to
another process, and a new process takes its place. An image that takes longer than the
pool's time limit (a decoder stuck in a loop, a small file claiming a huge picture) fails
with ``ExtractionTimedOut``: its process is killed and replaced the same way.

Each process may hold at most ``extract.memory_limit`` bytes more than it holds when ready
(``RLIMIT_DATA``: its heap and private mappings). Extraction refuses images whose decode it
estimates above that limit; where an estimate is wrong, the cap stops the decoder, the
image fails with ``too_much_memory`` and the process is replaced (the heap the failed
allocation grew stays mapped).

Kept apart from the engine so that the processes import only the extraction code, not
aiohttp, SQLAlchemy and Alembic: a new process is ready in a fraction of a second. Light
itself: the fork server imports the extraction code (numpy, libvips, Pillow), so a caller
that starts a pool first has its processes loading while it goes on with its own imports,
and never loads that code unless it extracts images itself.
"""

import asyncio
import contextlib
import hashlib
import logging
import mmap
import multiprocessing
import multiprocessing.forkserver
import os
import pickle
import signal
import socket
import struct
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from multiprocessing.process import BaseProcess
from typing import Any, Self

from crawler.config import ExtractSettings
from crawler.errors import CrawlerError, MemoryExhaustedError
from crawler.metadata import Extraction

log = logging.getLogger(__name__)

REQUESTS_PER_PROCESS = 2  # the image being extracted and the next one
BODY_FILE_STEP = 1024 * 1024  # memory files grow and shrink by whole steps
BODY_FILE_KEPT = 8 * BODY_FILE_STEP  # a bigger file shrinks again after its body
_LENGTH = struct.Struct("!I")  # prefix of every request and reply
_EXIT_MEMORY_EXHAUSTED = 3  # a process that ran out of memory exits to be replaced

Outcome = dict[str, Any]


class ExtractionProcessDied(Exception):
    """The process extracting an image died: a decoder crash, out of memory, a kill."""

    reason = "extract_crashed"

    def __init__(self) -> None:
        super().__init__("the extraction process died on it (a decoder crash, out of memory?)")


class ExtractionTimedOut(Exception):
    """An image took longer than the pool's time limit; its process was killed."""

    reason = "extract_timeout"

    def __init__(self, time_limit: float) -> None:
        super().__init__(f"extraction took over {time_limit:g} s (crawl.extract_timeout)")


class ExtractionFailedError(CrawlerError):
    """An image its extraction process refused, crashed on or took too long for: the
    message, HTTP status and reason of what went wrong there."""

    def __init__(self, message: str, status: int, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class _NotStarted(Exception):
    """The process holding this image died before it began on it."""


def pool_size(configured: int) -> int:
    """Processes for ``crawl.extract_workers`` (0: one per core)."""
    return configured or os.cpu_count() or 1


class ExtractionPool:
    """``size`` extraction processes, all started on entering (an async context manager);
    an image may take at most ``time_limit`` seconds.

    They fork from a server process that has only the extraction code imported. That server
    starts loading it when the pool is made, so that its imports (a few tenths of a second)
    overlap whatever the caller does before entering.
    """

    def __init__(self, size: int, settings: ExtractSettings, time_limit: float) -> None:
        self._size = size
        self._settings = settings
        self._time_limit = time_limit
        self._context = multiprocessing.get_context("forkserver")
        # This module is light; the server imports the extraction code for its processes.
        self._context.set_forkserver_preload([__name__, "crawler.extract"])
        multiprocessing.forkserver.ensure_running()
        self._processes: dict[_Process, asyncio.Task[None]] = {}  # and its reply reader
        self._free_slots: asyncio.Queue[tuple[_Process, int]] = asyncio.Queue()
        self._closing = False
        self._broken = False  # a dead process could not be replaced

    async def __aenter__(self) -> Self:
        await self._start(self._size)
        return self

    @property
    def process_ids(self) -> list[int]:
        """The ids of the extraction processes now running (for watching their memory)."""
        return [process.process.pid for process in self._processes if process.process.pid]

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing = True
        while self._processes:  # again if one was being replaced meanwhile
            processes, self._processes = self._processes, {}
            for process in processes:
                process.close()
            await asyncio.gather(*processes.values(), return_exceptions=True)
            await asyncio.to_thread(_join, [process.process for process in processes])

    async def extract(self, body: Sequence[bytes], url: str) -> Outcome:
        """``extract_in_worker(data, url, settings)`` in one of the processes, where
        ``data`` is the bytes of ``body`` (chunks) joined."""
        while True:
            process, slot = await self._free_slot()
            try:
                return await process.request(slot, body, url)
            except _NotStarted:
                continue  # the caller still has the body: another process takes it

    async def extraction(self, body: Sequence[bytes], url: str) -> tuple[Extraction, str]:
        """The metadata of the image in ``body`` (chunks) and the SHA-256 of its bytes, or
        ``ExtractionFailedError`` (the crawl stores a failed row instead)."""
        try:
            outcome = await self.extract(body, url)
        except (ExtractionTimedOut, ExtractionProcessDied) as exc:
            raise ExtractionFailedError(f"{url}: {exc}", 422, exc.reason) from None
        if "reason" in outcome:
            raise ExtractionFailedError(outcome["error"], outcome["status"], outcome["reason"])
        extraction = Extraction(
            outcome["metadata"],
            outcome["hash_algorithm"],
            outcome["warnings"],
            outcome["thumbnail"],
        )
        return extraction, outcome["sha256"]

    async def _free_slot(self) -> tuple["_Process", int]:
        process, slot = await self._free_slots.get()
        while not process.alive or process.retiring:  # a process that died, or exits
            if self._broken:
                self._free_slots.put_nowait((process, slot))  # for the next caller too
                raise ExtractionProcessDied()
            process, slot = await self._free_slots.get()
        return process, slot

    async def _start(self, count: int) -> None:
        started = [await self._start_process() for _ in range(count)]
        for slot in range(REQUESTS_PER_PROCESS):  # spread the first requests over them
            for process in started:
                self._free_slots.put_nowait((process, slot))

    async def _start_process(self) -> "_Process":
        ours, theirs = socket.socketpair()
        bodies = [_BodyFile() for _ in range(REQUESTS_PER_PROCESS)]
        process = self._context.Process(target=_serve, args=(theirs, self._settings), daemon=True)
        with _main_script_hidden():
            process.start()
        theirs.close()
        socket.send_fds(ours, [b"."], [body.file for body in bodies])
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        started = _Process(process, reader, writer, bodies, self._time_limit)
        self._processes[started] = asyncio.create_task(self._read_replies(started))
        return started

    async def _read_replies(self, process: "_Process") -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                slot = await process.read_reply()
                if not process.retiring:
                    self._free_slots.put_nowait((process, slot))
        if self._closing:
            return
        process.close()
        self._processes.pop(process, None)
        await asyncio.to_thread(_join, [process.process])
        if process.process.exitcode == _EXIT_MEMORY_EXHAUSTED:
            log.warning("an extraction process ran out of memory; replacing it")
        else:
            log.error("an extraction process died (exit code %s)", process.process.exitcode)
        try:
            await self._start(1)
        except Exception:
            log.exception("cannot start an extraction process; no more images are extracted")
            self._broken = True
            self._free_slots.put_nowait((process, 0))
        finally:
            process.fail_requests()


class _Process:
    """An extraction process as the crawler sees it: its socket, its memory files and the
    requests it holds, in the order it answers them. The first is the image it is on, which
    has ``time_limit`` seconds from when the process began on it."""

    def __init__(
        self,
        process: BaseProcess,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        bodies: list["_BodyFile"],
        time_limit: float,
    ) -> None:
        self.process = process
        self.alive = True
        self.retiring = False  # it ran out of memory and exits: it takes no more requests
        self._reader = reader
        self._writer = writer
        self._bodies = bodies
        self._time_limit = time_limit
        self._deadline: asyncio.TimerHandle | None = None
        self._requests: deque[tuple[int, str, asyncio.Future[Outcome]]] = deque()

    def request(self, slot: int, body: Sequence[bytes], url: str) -> asyncio.Future[Outcome]:
        size = self._bodies[slot].write(body)
        request = pickle.dumps((slot, size, url))
        self._writer.write(_LENGTH.pack(len(request)) + request)
        reply: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._requests.append((slot, url, reply))
        if len(self._requests) == 1:  # the process begins on it now
            self._start_clock()
        return reply

    async def read_reply(self) -> int:
        """Wait for the next reply and hand it to its request; returns the slot it freed."""
        size = _LENGTH.unpack(await self._reader.readexactly(_LENGTH.size))[0]
        reply = await self._reader.readexactly(size)
        slot, _, outcome = self._requests.popleft()
        self._stop_clock()
        if self._requests:  # the process goes on to the next one
            self._start_clock()
        result = pickle.loads(reply)
        self.retiring = self.retiring or bool(result.get("exhausted"))
        if not outcome.done():  # else abandoned by a stopped crawl, or timed out
            outcome.set_result(result)
        return slot

    def fail_requests(self) -> None:
        """After the process died: the image it was on failed, the others never began (nor
        did any, when it exited to be replaced)."""
        self._stop_clock()
        for position, (_, _, outcome) in enumerate(self._requests):
            if not outcome.done():
                died_on_it = position == 0 and not self.retiring
                outcome.set_exception(ExtractionProcessDied() if died_on_it else _NotStarted())
        self._requests.clear()

    def _start_clock(self) -> None:
        self._deadline = asyncio.get_running_loop().call_later(self._time_limit, self._time_out)

    def _stop_clock(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _time_out(self) -> None:
        _, url, outcome = self._requests[0]
        log.error("%s: extraction took over %g s; stopping its process", url, self._time_limit)
        if not outcome.done():
            outcome.set_exception(ExtractionTimedOut(self._time_limit))
        self.process.kill()  # its socket closes: replaced like any process that died

    def close(self) -> None:
        self._stop_clock()
        self.alive = False
        self._writer.close()
        for body in self._bodies:
            body.close()
        self._bodies = []


class _BodyFile:
    """A memory file and the crawler's mapping of it, where it writes bodies for a process.

    Copying into the mapping is a plain memory copy; writing to the file cost a page lookup
    and lock for every 4 KB. The file keeps its pages from one body to the next, so only
    a body bigger than all before it makes it grow, and a rare big one's pages go back after.
    """

    def __init__(self) -> None:
        self.file = os.memfd_create("crawler-body")
        self._mapping: mmap.mmap | None = None

    def write(self, chunks: Sequence[bytes]) -> int:
        """Copy ``chunks`` to the start of the file; returns how many bytes that was."""
        size = sum(map(len, chunks))
        mapping = self._mapping_for(size)
        offset = 0
        for chunk in chunks:
            mapping[offset : offset + len(chunk)] = chunk
            offset += len(chunk)
        return size

    def close(self) -> None:
        if self._mapping is not None:
            self._mapping.close()
        os.close(self.file)

    def _mapping_for(self, size: int) -> mmap.mmap:
        capacity = -(-max(size, 1) // BODY_FILE_STEP) * BODY_FILE_STEP
        mapping = self._mapping
        if mapping is None or len(mapping) < capacity or len(mapping) > BODY_FILE_KEPT:
            if mapping is not None:
                mapping.close()
            os.ftruncate(self.file, capacity)
            mapping = self._mapping = mmap.mmap(self.file, capacity)
        return mapping


def _join(processes: list[BaseProcess]) -> None:
    for process in processes:
        process.join()


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Python would re-run the main script in each new process (the ``crawler`` console
    script imports every command: aiohttp, SQLAlchemy, Alembic...), which costs a second
    and tens of megabytes per process; hiding the script's path while it starts avoids it."""
    main = sys.modules["__main__"]
    main_path = main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        if main_path is not None:
            main.__file__ = main_path


def _serve(connection: socket.socket, settings: ExtractSettings) -> None:
    """An extraction process: answer requests until the crawler closes the socket."""
    import pyvips  # loaded already: the fork server imported the extraction code

    # The pool has a process per core already: more libvips threads would only compete.
    pyvips.concurrency_set(1)
    # Ctrl-C reaches the whole process group; the crawler decides how its processes stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from crawler.extract.decode_cost import memory_cap

    with connection, contextlib.suppress(ConnectionError):
        _, files, _, _ = socket.recv_fds(connection, 1, REQUESTS_PER_PROCESS)
        bodies = [_BodyReader(file) for file in files]
        with memory_cap(settings.memory_limit):
            _answer(connection, bodies, settings)


def _answer(
    connection: socket.socket, bodies: list["_BodyReader"], settings: ExtractSettings
) -> None:
    """Extract the image of each request until the crawler closes the socket."""
    while (request := _receive(connection)) is not None:
        slot, size, url = pickle.loads(request)
        try:
            outcome = extract_in_worker(bodies[slot].read(size), url, settings)
        except MemoryError:  # not even the body fits under the cap
            outcome = _failure(MemoryExhaustedError(f"{url}: ran out of memory reading it"))
        reply = pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)
        connection.sendall(_LENGTH.pack(len(reply)) + reply)
        if outcome.get("exhausted"):
            sys.exit(_EXIT_MEMORY_EXHAUSTED)


class _BodyReader:
    """An extraction process's mapping of one of its memory files."""

    def __init__(self, file: int) -> None:
        self._file = file
        self._mapping: mmap.mmap | None = None

    def read(self, size: int) -> bytes:
        """The first ``size`` bytes of the file."""
        if self._mapping is None or len(self._mapping) < size:  # the file grew since
            if self._mapping is not None:
                self._mapping.close()
            self._mapping = mmap.mmap(self._file, os.fstat(self._file).st_size, prot=mmap.PROT_READ)
        return self._mapping[:size]


def _failure(exc: CrawlerError, sha256: str | None = None) -> Outcome:
    """The outcome of an image extraction refused: its reason, message and HTTP status;
    ``exhausted`` where this process ran out of memory and must be replaced."""
    return {
        "sha256": sha256,
        "reason": exc.reason,
        "error": str(exc),
        "status": exc.status,
        "exhausted": isinstance(exc, MemoryExhaustedError),
    }


def _receive(connection: socket.socket) -> bytes | None:
    """The next request, or None when the crawler has closed the socket."""
    header = _receive_exactly(connection, _LENGTH.size)
    return None if header is None else _receive_exactly(connection, _LENGTH.unpack(header)[0])


def _receive_exactly(connection: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def extract_in_worker(data: bytes, url: str, settings: ExtractSettings) -> Outcome:
    """The SHA-256 of ``data``, its metadata and thumbnail, or the reason extraction failed
    (with the HTTP status the API answers with)."""
    from crawler.extract import extract  # loaded already, as above

    outcome: Outcome = {"sha256": hashlib.sha256(data).hexdigest()}
    try:
        extraction = extract(data, url, settings)
    except CrawlerError as exc:
        return _failure(exc, outcome["sha256"])
    except Exception as exc:  # a decoder bug must fail one URL, not the crawl
        log.exception("extraction of %s crashed", url)
        error = f"{type(exc).__name__}: {exc}"
        return outcome | {"reason": "extract_error", "error": error, "status": 500}
    return outcome | {
        "metadata": extraction.metadata,
        "hash_algorithm": extraction.hash_algorithm,
        "warnings": list(extraction.warnings),
        "thumbnail": extraction.thumbnail,
    }
