"""The catalogue schema as SQLAlchemy 2 models: one ``images`` row per image URL, and the
crawl's shared state: one ``hosts`` row per host with its politeness and lease, one
``crawlers`` row per running crawler with its heartbeat.

The migrations in ``migrations/versions`` create exactly this schema (a test compares them);
change both together. ``phash`` is the 64-bit hash as a signed BIGINT (two's complement), and
``phash_c0`` .. ``phash_c3`` are its four 16-bit chunks, most significant first, each an
unsigned integer 0..65535: the multi-index-hashing keys that ``crawler.query`` searches by.
An image's key is ``url_hash``, a digest of its URL, so that URLs of any length fit a btree.
"""

import hashlib
from datetime import UTC, datetime
from typing import Any, Final, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

STATUSES: Final = ("pending", "ok", "failed", "skipped")
CHUNK_COUNT: Final = 4
CHUNK_BITS: Final = 64 // CHUNK_COUNT
CHUNK_COLUMNS: Final = tuple(f"phash_c{i}" for i in range(CHUNK_COUNT))
URL_HASH_BYTES: Final = 16
PENDING: Final = sa.text("status = 'pending'")

# SQLite only treats "INTEGER PRIMARY KEY" as the rowid; BIGINT would be a plain column.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """TIMESTAMPTZ on PostgreSQL; on SQLite, which keeps no zone, UTC by convention.

    Values go in converted to UTC and always come out timezone-aware, on both databases.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: catalogue times must carry a zone")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class Image(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(BigId, sa.Identity(), primary_key=True)
    url: Mapped[str] = mapped_column(sa.Text)
    url_hash: Mapped[bytes] = mapped_column(sa.LargeBinary)
    # The host the crawl schedules the row under (LOCAL_HOST for files); NULL for bad seeds.
    host: Mapped[str | None] = mapped_column(sa.Text)
    final_url: Mapped[str | None] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.Text)
    reason: Mapped[str | None] = mapped_column(sa.Text)
    error: Mapped[str | None] = mapped_column(sa.Text)
    http_status: Mapped[int | None] = mapped_column(sa.Integer)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    claimed_by: Mapped[str | None] = mapped_column(sa.Text)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    first_seen_at: Mapped[datetime] = mapped_column(
        UTCDateTime, server_default=sa.func.current_timestamp()
    )
    fetched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    etag: Mapped[str | None] = mapped_column(sa.Text)
    last_modified: Mapped[str | None] = mapped_column(sa.Text)
    content_type: Mapped[str | None] = mapped_column(sa.Text)
    sha256: Mapped[str | None] = mapped_column(sa.Text)
    width: Mapped[int | None] = mapped_column(sa.Integer)
    height: Mapped[int | None] = mapped_column(sa.Integer)
    size: Mapped[int | None] = mapped_column(sa.BigInteger)
    format: Mapped[str | None] = mapped_column(sa.Text)
    has_color_profile: Mapped[bool | None] = mapped_column(sa.Boolean)
    quality: Mapped[int | None] = mapped_column(sa.Integer)
    density: Mapped[int | None] = mapped_column(sa.Integer)
    has_transparency: Mapped[bool | None] = mapped_column(sa.Boolean)
    phash: Mapped[int | None] = mapped_column(sa.BigInteger)
    phash_algorithm: Mapped[str | None] = mapped_column(sa.Text)
    phash_c0: Mapped[int | None] = mapped_column(sa.Integer)
    phash_c1: Mapped[int | None] = mapped_column(sa.Integer)
    phash_c2: Mapped[int | None] = mapped_column(sa.Integer)
    phash_c3: Mapped[int | None] = mapped_column(sa.Integer)
    # "metadata" is reserved on declarative classes, so the attribute has a trailing underscore.
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", Json)
    # The object exactly as extracted (key order, NUL characters), which JSONB does not keep.
    metadata_json: Mapped[str | None] = mapped_column(sa.Text)
    warnings: Mapped[str | None] = mapped_column(sa.Text)
    make: Mapped[str | None] = mapped_column(sa.Text)
    model: Mapped[str | None] = mapped_column(sa.Text)
    lens: Mapped[str | None] = mapped_column(sa.Text)
    taken_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=False))
    orientation: Mapped[int | None] = mapped_column(sa.Integer)
    iso: Mapped[int | None] = mapped_column(sa.Integer)
    exposure_time: Mapped[float | None] = mapped_column(sa.Float)
    f_number: Mapped[float | None] = mapped_column(sa.Float)
    focal_length: Mapped[float | None] = mapped_column(sa.Float)
    gps_latitude: Mapped[float | None] = mapped_column(sa.Float)
    gps_longitude: Mapped[float | None] = mapped_column(sa.Float)

    __table_args__ = (
        sa.UniqueConstraint("url_hash", name="uq_images_url_hash"),
        sa.CheckConstraint(
            "status IN ('pending', 'ok', 'failed', 'skipped')", name="ck_images_status"
        ),
        sa.Index("ix_images_status", "status"),
        sa.Index("ix_images_sha256", "sha256"),
        sa.Index("ix_images_format", "format"),
        sa.Index("ix_images_make_model", "make", "model"),
        sa.Index("ix_images_taken_at", "taken_at"),
        # The frontier: a host's pending rows in order, and a crawler's claims.
        sa.Index(
            "ix_images_pending_host", "host", "id", postgresql_where=PENDING, sqlite_where=PENDING
        ),
        sa.Index(
            "ix_images_pending_claimed_by",
            "claimed_by",
            postgresql_where=PENDING,
            sqlite_where=PENDING,
        ),
        # Each chunk index also holds the whole hash (and on PostgreSQL the id), so the exact
        # distance of every candidate is computed from the index alone: an index-only scan.
        *(
            sa.Index(f"ix_images_{column}", column, "phash", postgresql_include=["id"])
            for column in CHUNK_COLUMNS
        ),
    )


class Host(Base):
    """A host's politeness, shared by every crawler: who holds it (a lease that lasts as long
    as its crawler's heartbeat), when the next request may start, and how it has behaved.

    ``work_version`` grows whenever rows are added to the host (or requeued);
    ``done_version`` is the version its last holder found empty: the host has work to do
    while the first is larger."""

    __tablename__ = "hosts"

    host: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    owner: Mapped[str | None] = mapped_column(sa.Text)
    next_fetch_at: Mapped[datetime] = mapped_column(UTCDateTime)
    backoff_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failures: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    crawl_delay: Mapped[float | None] = mapped_column(sa.Float)
    seconds_per_fetch: Mapped[float | None] = mapped_column(sa.Float)
    work_version: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    done_version: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")

    __table_args__ = (
        sa.Index(
            "ix_hosts_with_work",
            "next_fetch_at",
            postgresql_where=sa.text("work_version > done_version"),
            sqlite_where=sa.text("work_version > done_version"),
        ),
    )


class Crawler(Base):
    """A running crawler. Its claims on rows and hosts hold while ``heartbeat_at`` is
    younger than the lease time; a crawler that stops beating loses them all at once."""

    __tablename__ = "crawlers"

    id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    machine: Mapped[str] = mapped_column(sa.Text)
    pid: Mapped[int] = mapped_column(sa.Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)


images: Final = cast(sa.Table, Image.__table__)
hosts: Final = cast(sa.Table, Host.__table__)
crawlers: Final = cast(sa.Table, Crawler.__table__)


# images_hex adds phash as 16 hex digits; to_hex and printf both print the 64 bits unsigned.
_HEX_EXPRESSION: Final = {
    "postgresql": "lpad(to_hex(phash), 16, '0')",
    "sqlite": "printf('%016x', phash)",
}


def hex_view_sql(dialect: str) -> str:
    """The statement that creates the view ``images_hex`` (the migrations run it)."""
    return (
        "CREATE VIEW images_hex AS SELECT images.*, "
        f"CASE WHEN phash IS NOT NULL THEN {_HEX_EXPRESSION[dialect]} END AS phash_hex "
        "FROM images"
    )


def url_key(url: str) -> bytes:
    """The catalogue's unique key of an image URL (``url_hash``): a 128-bit BLAKE2b digest
    of the URL as stored, so that URLs of any length can be looked up through an index."""
    return hashlib.blake2b(
        url.encode("utf-8", "surrogatepass"), digest_size=URL_HASH_BYTES
    ).digest()


def chunk_shift(index: int) -> int:
    """How far to shift a hash right to bring chunk ``index`` to the low bits."""
    return 64 - CHUNK_BITS * (index + 1)


def phash_chunks(phash: int) -> tuple[int, ...]:
    """The four 16-bit chunk values (``phash_c0`` .. ``phash_c3``) of a signed or unsigned hash."""
    mask = (1 << CHUNK_BITS) - 1
    return tuple((phash >> chunk_shift(i)) & mask for i in range(CHUNK_COUNT))
