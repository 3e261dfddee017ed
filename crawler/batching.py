"""Many concurrent lookups by key answered by few reads: ``BatchedReads``.

A page of thumbnails is dozens of requests at once, each for one row. Read one by one,
each costs a thread hop, a connection checkout and a round trip to the database; here the
keys asked for while one read runs are read together by the next, in one query.
"""

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Final, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

MOST_KEYS: Final = 500  # per read: within every database's limit of query parameters


class BatchedReads(Generic[K, V]):
    """``get(key)`` answers from ``read(keys)``, which returns the values it found by key
    (a key it leaves out has none: None). Keys asked for while a read runs wait for the
    next one, which takes them all (``MOST_KEYS`` at a time); a failed read fails the
    callers it was for."""

    def __init__(self, read: Callable[[list[K]], Awaitable[dict[K, V]]]) -> None:
        self._read = read
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V | None:
        answer: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(answer)
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_waiting())
        return await answer

    async def _read_waiting(self) -> None:
        try:
            while self._waiting:
                keys = list(self._waiting)[:MOST_KEYS]
                batch = {key: self._waiting.pop(key) for key in keys}
                try:
                    found: dict[K, V] | Exception = await self._read(keys)
                except Exception as exc:
                    found = exc
                _settle(batch, found)
        finally:
            self._reader = None


def _settle(batch: dict[K, list[asyncio.Future[V | None]]], found: dict[K, V] | Exception) -> None:
    """Answer each waiting caller of ``batch`` with its key's value, or the read's error."""
    for key, answers in batch.items():
        for answer in answers:
            if answer.done():  # its request was cancelled (the client went away)
                continue
            if isinstance(found, Exception):
                answer.set_exception(found)
            else:
                answer.set_result(found.get(key))
