"""The catalogue schema as SQLAlchemy Core tables: one ``images`` row per image URL, and the
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
from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

STATUSES: Final = ("pending", "ok", "failed", "skipped")
CHUNK_COUNT: Final = 4
CHUNK_BITS: Final = 64 // CHUNK_COUNT
CHUNK_COLUMNS: Final = tuple(f"phash_c{i}" for i in range(CHUNK_COUNT))
URL_HASH_BYTES: Final = 16
PENDING: Final = sa.text("status = 'pending'")
# Written out, not bound: SQLite uses a partial index only for a query that repeats its WHERE.
FAILED_OR_SKIPPED: Final = sa.text("status IN ('failed', 'skipped')")

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


# Core tables, not ORM classes: every reader of the catalogue imports this module, and the ORM
# costs ~0.14 s to import.
metadata: Final = sa.MetaData()


images: Final = sa.Table(
    "images",
    metadata,
    sa.Column("id", BigId, sa.Identity(), primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("url_hash", sa.LargeBinary, nullable=False),
    # The host the crawl schedules the row under (LOCAL_HOST for files); NULL for bad seeds.
    sa.Column("host", sa.Text),
    sa.Column("final_url", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("http_status", sa.Integer),
    sa.Column("attempts", sa.Integer, default=0, server_default="0", nullable=False),
    sa.Column("claimed_by", sa.Text),
    sa.Column("claimed_at", UTCDateTime),
    sa.Column(
        "first_seen_at", UTCDateTime, server_default=sa.func.current_timestamp(), nullable=False
    ),
    sa.Column("fetched_at", UTCDateTime),
    sa.Column("updated_at", UTCDateTime),
    sa.Column("etag", sa.Text),
    sa.Column("last_modified", sa.Text),
    sa.Column("content_type", sa.Text),
    sa.Column("sha256", sa.Text),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("size", sa.BigInteger),
    sa.Column("format", sa.Text),
    sa.Column("has_color_profile", sa.Boolean),
    sa.Column("quality", sa.Integer),
    sa.Column("density", sa.Integer),
    sa.Column("has_transparency", sa.Boolean),
    sa.Column("phash", sa.BigInteger),
    sa.Column("phash_algorithm", sa.Text),
    sa.Column("phash_c0", sa.Integer),
    sa.Column("phash_c1", sa.Integer),
    sa.Column("phash_c2", sa.Integer),
    sa.Column("phash_c3", sa.Integer),
    sa.Column("metadata", Json),
    # The object exactly as extracted (key order, NUL characters), which JSONB does not keep.
    sa.Column("metadata_json", sa.Text),
    sa.Column("warnings", sa.Text),
    sa.Column("make", sa.Text),
    sa.Column("model", sa.Text),
    sa.Column("lens", sa.Text),
    sa.Column("taken_at", sa.DateTime(timezone=False)),
    sa.Column("orientation", sa.Integer),
    sa.Column("iso", sa.Integer),
    sa.Column("exposure_time", sa.Float),
    sa.Column("f_number", sa.Float),
    sa.Column("focal_length", sa.Float),
    sa.Column("gps_latitude", sa.Float),
    sa.Column("gps_longitude", sa.Float),
    # The last revalidation (--refresh) of the stored copy: when, and what it found. A
    # failed one leaves every column above as it was.
    sa.Column("checked_at", UTCDateTime),
    sa.Column("check_status", sa.Text),
    sa.Column("check_reason", sa.Text),
    sa.Column("check_error", sa.Text),
    sa.Column("check_http_status", sa.Integer),
    sa.UniqueConstraint("url_hash", name="uq_images_url_hash"),
    sa.CheckConstraint("status IN ('pending', 'ok', 'failed', 'skipped')", name="ck_images_status"),
    sa.Index("ix_images_sha256", "sha256"),
    # The page's filters and sorts (crawler.browse): each ends in id, the order within equal
    # keys, so that a filtered page in id order, or a sorted one, is one walk down an index.
    sa.Index("ix_images_status", "status", "id"),
    sa.Index("ix_images_format", "format", "id"),
    sa.Index("ix_images_make_model", "make", "model", "id"),
    sa.Index("ix_images_taken_at", "taken_at", "id"),
    sa.Index("ix_images_size", "size", "id"),
    # One camera's photos by date taken: the page's most common pairing of a filter and a sort.
    sa.Index("ix_images_camera_taken_at", "make", "model", "taken_at", "id"),
    # The summary's failures by reason, without reading the failed rows themselves.
    sa.Index(
        "ix_images_failures",
        "status",
        "reason",
        postgresql_where=FAILED_OR_SKIPPED,
        sqlite_where=FAILED_OR_SKIPPED,
    ),
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


# One small WebP per image, apart from ``images`` so that scans of the catalogue stay lean:
# made during extraction from the reduced decode the pHash already needs, oriented as shown.
thumbnails: Final = sa.Table(
    "thumbnails",
    metadata,
    sa.Column(
        "image_id",
        BigId,
        sa.ForeignKey("images.id", ondelete="CASCADE", name="fk_thumbnails_image_id"),
        primary_key=True,
    ),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("webp", sa.LargeBinary, nullable=False),
)


# A host's politeness, shared by every crawler: who holds it (a lease that lasts as long
# as its crawler's heartbeat), when the next request may start, and how it has behaved.
# ``work_version`` grows whenever rows are added to the host (or requeued);
# ``done_version`` is the version its last holder found empty: the host has work to do
# while the first is larger.
hosts: Final = sa.Table(
    "hosts",
    metadata,
    sa.Column("host", sa.Text, primary_key=True),
    sa.Column("owner", sa.Text),
    sa.Column("next_fetch_at", UTCDateTime, nullable=False),
    sa.Column("backoff_until", UTCDateTime),
    sa.Column("failures", sa.Integer, default=0, server_default="0", nullable=False),
    sa.Column("crawl_delay", sa.Float),
    sa.Column("seconds_per_fetch", sa.Float),
    sa.Column("work_version", sa.BigInteger, default=0, server_default="0", nullable=False),
    sa.Column("done_version", sa.BigInteger, default=0, server_default="0", nullable=False),
    sa.Index(
        "ix_hosts_with_work",
        "next_fetch_at",
        postgresql_where=sa.text("work_version > done_version"),
        sqlite_where=sa.text("work_version > done_version"),
    ),
)


# A running crawler. Its claims on rows and hosts hold while ``heartbeat_at`` is
# younger than the lease time; a crawler that stops beating loses them all at once.
crawlers: Final = sa.Table(
    "crawlers",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("machine", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("heartbeat_at", UTCDateTime, nullable=False),
)


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
