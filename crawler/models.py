"""The catalogue schema as SQLAlchemy 2 models: one ``images`` row per image URL.

The migrations in ``migrations/versions`` create exactly this schema (a test compares them);
change both together. ``phash`` is the 64-bit hash as a signed BIGINT (two's complement), and
``phash_c0`` .. ``phash_c3`` are its four 16-bit chunks, most significant first, each an
unsigned integer 0..65535: the multi-index-hashing keys that ``crawler.query`` searches by.
"""

from datetime import UTC, datetime
from typing import Any, Final, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

STATUSES: Final = ("pending", "ok", "failed", "skipped")
CHUNK_COUNT: Final = 4
CHUNK_BITS: Final = 64 // CHUNK_COUNT
CHUNK_COLUMNS: Final = tuple(f"phash_c{i}" for i in range(CHUNK_COUNT))

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
        sa.UniqueConstraint("url", name="uq_images_url"),
        sa.CheckConstraint(
            "status IN ('pending', 'ok', 'failed', 'skipped')", name="ck_images_status"
        ),
        sa.Index("ix_images_status", "status"),
        sa.Index("ix_images_sha256", "sha256"),
        sa.Index("ix_images_format", "format"),
        sa.Index("ix_images_make_model", "make", "model"),
        sa.Index("ix_images_taken_at", "taken_at"),
        # Each chunk index also holds the whole hash (and on PostgreSQL the id), so the exact
        # distance of every candidate is computed from the index alone: an index-only scan.
        *(
            sa.Index(f"ix_images_{column}", column, "phash", postgresql_include=["id"])
            for column in CHUNK_COLUMNS
        ),
    )


images: Final = cast(sa.Table, Image.__table__)


def chunk_shift(index: int) -> int:
    """How far to shift a hash right to bring chunk ``index`` to the low bits."""
    return 64 - CHUNK_BITS * (index + 1)


def phash_chunks(phash: int) -> tuple[int, ...]:
    """The four 16-bit chunk values (``phash_c0`` .. ``phash_c3``) of a signed or unsigned hash."""
    mask = (1 << CHUNK_BITS) - 1
    return tuple((phash >> chunk_shift(i)) & mask for i in range(CHUNK_COUNT))
