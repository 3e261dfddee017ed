"""The process pool that decodes and hashes images for the crawl, off the event loop.

Kept apart from the engine so that pool processes import only the extraction code, not
aiohttp, SQLAlchemy and Alembic: a new process is ready in a fraction of a second.
"""

import hashlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pyvips

from crawler.config import ExtractSettings
from crawler.errors import CrawlerError
from crawler.extract import extract

log = logging.getLogger(__name__)

PARENT_CHECK_SECONDS = 1.0
STARTUP_TASK_SECONDS = 0.2


def pool_size(configured: int) -> int:
    """Processes for ``crawl.extract_workers`` (0: one per core)."""
    return configured or os.cpu_count() or 1


def start_pool(size: int) -> ProcessPoolExecutor:
    """A pool of ``size`` processes, all started now (this blocks for a moment).

    They fork from a server process that has only the extraction code imported. Python
    would also re-run the main script in each of them (the ``crawler`` console script
    imports every command: aiohttp, SQLAlchemy, Alembic...), which costs a second and tens
    of megabytes per process; hiding the script's path while the processes start avoids it.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    pool = ProcessPoolExecutor(
        size, mp_context=context, initializer=_start_worker, initargs=(os.getpid(),)
    )
    main = sys.modules["__main__"]
    main_path = main.__dict__.pop("__file__", None)
    try:
        # A submit while no process is idle starts one more; the tasks linger so that
        # none is idle before all are started.
        for _ in range(size):
            pool.submit(time.sleep, STARTUP_TASK_SECONDS)
    finally:
        if main_path is not None:
            main.__file__ = main_path
    return pool


def extract_in_worker(data: bytes, url: str, settings: ExtractSettings) -> dict[str, Any]:
    """The SHA-256 of ``data`` and its metadata, or the reason extraction failed."""
    outcome: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest()}
    try:
        extraction = extract(data, url, settings)
    except CrawlerError as exc:
        return outcome | {"reason": exc.reason, "error": str(exc)}
    except Exception as exc:  # a decoder bug must fail one URL, not the crawl
        log.exception("extraction of %s crashed", url)
        return outcome | {"reason": "extract_error", "error": f"{type(exc).__name__}: {exc}"}
    return outcome | {
        "metadata": extraction.metadata,
        "hash_algorithm": extraction.hash_algorithm,
        "warnings": list(extraction.warnings),
    }


def _start_worker(crawler_pid: int) -> None:
    # The pool has a process per core already: more libvips threads would only compete.
    pyvips.concurrency_set(1)
    # Ctrl-C reaches the whole process group; the crawler decides how its workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker waits on a queue it also holds the writing end of, so it would outlive a
    # crawler killed with SIGKILL: watch the crawler instead, and follow it.
    threading.Thread(target=_exit_after, args=(crawler_pid,), daemon=True).start()


def _exit_after(pid: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_SECONDS)
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):  # gone (or its pid reused by another)
            os._exit(1)
