"""Writes: crawl results into the catalogue, as batched, idempotent upserts keyed by URL.

Storing a URL again replaces everything the earlier result said about it (and releases any
crawler claim on it); only ``id``, the URL's key and host, ``first_seen_at`` and
``attempts`` are kept. Except for a revalidation that failed (``--refresh`` of a stored
copy found an error, a robots.txt refusal or bytes it cannot decode): that never erases
good data. The row keeps its copy, metadata and status, and only its check columns
(``checked_at``, ``check_status``, ``check_reason``, ``check_error``,
``check_http_status``) record what happened. The typed
columns, the pHash chunks and the flattened EXIF are derived here from the metadata object.
The object itself is kept twice: as JSON text in ``metadata_json``, exactly as extracted, for
reading it back, and in ``metadata`` (JSONB on PostgreSQL) for SQL queries.
"""

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from crawler.catalogue import Catalogue
from crawler.errors import CatalogueError
from crawler.hashes import hex_to_signed
from crawler.metadata import Thumbnail
from crawler.models import CHUNK_COLUMNS, STATUSES, images, phash_chunks, thumbnails, url_key
from crawler.seeds import host_of

BATCH_SIZE: Final = 500
_INT32_MAX: Final = 2**31 - 1
# Columns an upsert of an existing URL leaves alone.
_KEPT_ON_UPDATE: Final = frozenset({"id", "url", "url_hash", "host", "first_seen_at", "attempts"})
# PostgreSQL text and JSONB cannot hold U+0000, which EXIF strings often contain. In
# ``metadata_json`` it is the escape ``\u0000`` instead, so only ``metadata`` loses it.
_NUL: Final = "\x00"
_NUL_STAND_IN: Final = "\ufffd"
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
# What the last revalidation of a stored copy found.
_CHECK_COLUMNS: Final = (
    "checked_at",
    "check_status",
    "check_reason",
    "check_error",
    "check_http_status",
)


@dataclass
class CrawlResult:
    """What one fetch of one URL found: its status and, when it is ``ok``, the metadata object."""

    url: str
    status: str  # one of models.STATUSES
    reason: str | None = None
    error: str | None = None
    final_url: str | None = None
    http_status: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    sha256: str | None = None
    fetched_at: datetime | None = None
    metadata: dict[str, Any] | None = None
    hash_algorithm: str | None = None
    warnings: Sequence[str] = ()
    thumbnail: Thumbnail | None = None  # stored in ``thumbnails``, replacing the row's last
    revalidation: bool = False  # the row had a stored copy, which this fetch checked

    @property
    def keeps_copy(self) -> bool:
        """Whether storing it leaves the stored copy alone: a revalidation that failed."""
        return self.revalidation and self.status != "ok"


def store_results(catalogue: Catalogue, results: Sequence[CrawlResult]) -> None:
    """Insert or update one row per result, in one transaction, ``BATCH_SIZE`` rows a statement."""
    if not results:
        return
    now = datetime.now(UTC)
    keep_nul = catalogue.dialect != "postgresql"
    stored = [result for result in results if not result.keeps_copy]
    rows = [_keyed(_storable(result_row(result, now), keep_nul)) for result in stored]
    checks = [_storable(_failed_check(result, now), keep_nul) for result in results]
    statement = _upsert_statement(catalogue.dialect)
    with catalogue.engine.begin() as connection:
        for start in range(0, len(rows), BATCH_SIZE):
            connection.execute(statement, rows[start : start + BATCH_SIZE])
        _replace_thumbnails(connection, [row["url_hash"] for row in rows], stored)
        if failed_checks := [check for check in checks if check is not None]:
            connection.execute(_RECORD_FAILED_CHECK, failed_checks)


def _replace_thumbnails(
    connection: sa.Connection, keys: list[bytes], stored: list[CrawlResult]
) -> None:
    """The thumbnail of each row just stored (by URL key) is its result's, or none."""
    for start in range(0, len(keys), BATCH_SIZE):
        connection.execute(_DELETE_THUMBNAILS, {"keys": keys[start : start + BATCH_SIZE]})
    made = [
        {"key": key, "width": thumbnail.width, "height": thumbnail.height, "webp": thumbnail.webp}
        for key, result in zip(keys, stored, strict=True)
        if (thumbnail := result.thumbnail) is not None
    ]
    if made:
        connection.execute(_INSERT_THUMBNAIL, made)


_DELETE_THUMBNAILS: Final = sa.delete(thumbnails).where(
    thumbnails.c.image_id.in_(
        sa.select(images.c.id).where(images.c.url_hash.in_(sa.bindparam("keys", expanding=True)))
    )
)
_INSERT_THUMBNAIL: Final = sa.insert(thumbnails).from_select(
    ["image_id", "width", "height", "webp"],
    sa.select(
        images.c.id,
        sa.bindparam("width", type_=sa.Integer),
        sa.bindparam("height", type_=sa.Integer),
        sa.bindparam("webp", type_=sa.LargeBinary),
    ).where(images.c.url_hash == sa.bindparam("key")),
)


def _keyed(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its key and host, from its URL as it will be stored."""
    return row | {"url_hash": url_key(row["url"]), "host": host_of(row["url"])}


def result_row(result: CrawlResult, now: datetime) -> dict[str, Any]:
    """The ``images`` row (every column but ``id`` and ``attempts``) that stores ``result``."""
    if result.status not in STATUSES:
        raise CatalogueError(
            f"cannot store {result.url}: status {result.status!r} is not one of "
            f"{', '.join(STATUSES)}"
        )
    metadata = result.metadata or {}
    return {
        "url": result.url,
        "final_url": result.final_url,
        "status": result.status,
        "reason": result.reason,
        "error": result.error,
        "http_status": result.http_status,
        "claimed_by": None,
        "claimed_at": None,
        "first_seen_at": now,
        "fetched_at": result.fetched_at,
        "updated_at": now,
        "etag": result.etag,
        "last_modified": result.last_modified,
        "content_type": result.content_type,
        "sha256": result.sha256,
        "width": metadata.get("width"),
        "height": metadata.get("height"),
        "size": metadata.get("size"),
        "format": metadata.get("format"),
        "has_color_profile": metadata.get("hasColorProfile"),
        "quality": metadata.get("quality"),
        "density": metadata.get("density"),
        "has_transparency": metadata.get("hasTransparency"),
        **_phash_columns(metadata.get("pHash"), result.hash_algorithm),
        "metadata": result.metadata,
        "metadata_json": _metadata_json(result.metadata),
        "warnings": "\n".join(result.warnings) or None,
        **exif_columns(metadata.get("exif") or {}),
        **_check_columns(result, now),
    }


def _check_columns(result: CrawlResult, now: datetime) -> dict[str, Any]:
    """The check columns of a row stored whole: a revalidation that stored the copy it
    fetched, or none at all (a first fetch, a retry of a failed row)."""
    if not result.revalidation:
        return dict.fromkeys(_CHECK_COLUMNS)
    return {
        "checked_at": result.fetched_at or now,
        "check_status": result.status,
        "check_reason": None,
        "check_error": None,
        "check_http_status": result.http_status,
    }


def _failed_check(result: CrawlResult, now: datetime) -> dict[str, Any] | None:
    """The parameters of ``_RECORD_FAILED_CHECK`` for a failed revalidation, else None."""
    if not result.keeps_copy:
        return None
    return {
        "key": url_key(result.url),
        "now": now,
        "at": result.fetched_at or now,
        "found": result.status,
        "why": result.reason,
        "message": result.error,
        "answer": result.http_status,
    }


# A failed revalidation: the row is 'pending' while it is refreshed, and it was 'ok' (only a
# row with metadata is revalidated), so it goes back to 'ok' with everything else as it was.
_RECORD_FAILED_CHECK: Final = (
    sa.update(images)
    .where(images.c.url_hash == sa.bindparam("key"))
    .values(
        status="ok",
        claimed_by=None,
        claimed_at=None,
        updated_at=sa.bindparam("now"),
        checked_at=sa.bindparam("at"),
        check_status=sa.bindparam("found"),
        check_reason=sa.bindparam("why"),
        check_error=sa.bindparam("message"),
        check_http_status=sa.bindparam("answer"),
    )
)


def _metadata_json(metadata: dict[str, Any] | None) -> str | None:
    """The exact JSON text of ``metadata``: its key order kept, control characters such as
    U+0000 written as escapes (which PostgreSQL text accepts), other characters as they are."""
    return None if metadata is None else json.dumps(metadata, ensure_ascii=False)


def _phash_columns(phash_hex: str | None, algorithm: str | None) -> dict[str, Any]:
    if phash_hex is None:
        return {"phash": None, "phash_algorithm": None} | dict.fromkeys(CHUNK_COLUMNS)
    phash = hex_to_signed(phash_hex)
    chunks = dict(zip(CHUNK_COLUMNS, phash_chunks(phash), strict=True))
    return {"phash": phash, "phash_algorithm": algorithm} | chunks


def exif_columns(exif: dict[str, Any]) -> dict[str, Any]:
    """The flattened EXIF columns from the metadata object's ``exif`` sections."""
    image = exif.get("image") or {}
    photo = exif.get("exif") or {}
    gps = exif.get("gps") or {}
    return {
        "make": _text(image.get("Make")),
        "model": _text(image.get("Model")),
        "lens": _text(photo.get("LensModel")),
        "taken_at": _exif_datetime(photo.get("DateTimeOriginal")),
        "orientation": _integer(image.get("Orientation")),
        "iso": _integer(photo.get("ISO")),
        "exposure_time": _number(photo.get("ExposureTime")),
        "f_number": _number(photo.get("FNumber")),
        "focal_length": _number(photo.get("FocalLength")),
        "gps_latitude": _coordinate(gps.get("GPSLatitude"), gps.get("GPSLatitudeRef"), "S", 90),
        "gps_longitude": _coordinate(gps.get("GPSLongitude"), gps.get("GPSLongitudeRef"), "W", 180),
    }


def _first(value: Any) -> Any:
    """EXIF keeps multi-valued tags as lists; a filter column wants the first value."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _text(value: Any) -> str | None:
    # Like exiftool, read EXIF text as a C string: up to the first NUL, trimmed.
    value = _first(value)
    if not isinstance(value, str):
        return None
    return value.split(_NUL, 1)[0].strip() or None


def _number(value: Any) -> float | None:
    value = _first(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _integer(value: Any) -> int | None:
    number = _number(value)
    if number is None or not number.is_integer() or abs(number) > _INT32_MAX:
        return None
    return int(number)


def _exif_datetime(value: Any) -> datetime | None:
    text = _text(value)
    if text is None:
        return None
    try:
        return datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:  # "0000:00:00 00:00:00" and other placeholders
        return None


def _coordinate(value: Any, ref: Any, negative_ref: str, limit: float) -> float | None:
    """Signed decimal degrees from EXIF degrees/minutes/seconds and an N/S or E/W reference."""
    parts = value if isinstance(value, list) else [value]
    numbers = [number for part in parts[:3] if (number := _number(part)) is not None]
    if not numbers or len(numbers) < len(parts[:3]):
        return None
    degrees = sum(number / 60**i for i, number in enumerate(numbers))
    if abs(degrees) > limit:
        return None
    return -degrees if (_text(ref) or "").upper().startswith(negative_ref) else degrees


def _storable(value: Any, keep_nul: bool) -> Any:
    """``value`` with every string one the database accepts.

    Lone surrogates (aiohttp decodes header bytes that are not UTF-8 as surrogate escapes)
    cannot be encoded for the database at all, and one would fail the whole batch: they
    become U+FFFD. So does U+0000 on PostgreSQL.
    """
    if isinstance(value, str):
        if not value.isascii():
            value = _SURROGATE.sub(_NUL_STAND_IN, value)
        return value if keep_nul else value.replace(_NUL, _NUL_STAND_IN)
    if isinstance(value, dict):
        return {key: _storable(item, keep_nul) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item, keep_nul) for item in value]
    return value


def _upsert_statement(dialect: str) -> sa.Insert:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(images)
    updated = {
        column.name: statement.excluded[column.name]
        for column in images.columns
        if column.name not in _KEPT_ON_UPDATE
    }
    return statement.on_conflict_do_update(index_elements=["url_hash"], set_=updated)
