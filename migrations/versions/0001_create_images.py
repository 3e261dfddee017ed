"""Create the images table, its indexes and the images_hex view.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from crawler.models import hex_view_sql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHUNK_COLUMNS = ("phash_c0", "phash_c1", "phash_c2", "phash_c3")


def upgrade() -> None:
    timestamp = sa.DateTime(timezone=True)
    op.create_table(
        "images",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(),
            primary_key=True,
        ),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("final_url", sa.Text()),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("error", sa.Text()),
        sa.Column("http_status", sa.Integer()),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("claimed_by", sa.Text()),
        sa.Column("claimed_at", timestamp),
        sa.Column(
            "first_seen_at", timestamp, nullable=False, server_default=sa.func.current_timestamp()
        ),
        sa.Column("fetched_at", timestamp),
        sa.Column("updated_at", timestamp),
        sa.Column("etag", sa.Text()),
        sa.Column("last_modified", sa.Text()),
        sa.Column("content_type", sa.Text()),
        sa.Column("sha256", sa.Text()),
        sa.Column("width", sa.Integer()),
        sa.Column("height", sa.Integer()),
        sa.Column("size", sa.BigInteger()),
        sa.Column("format", sa.Text()),
        sa.Column("has_color_profile", sa.Boolean()),
        sa.Column("quality", sa.Integer()),
        sa.Column("density", sa.Integer()),
        sa.Column("has_transparency", sa.Boolean()),
        sa.Column("phash", sa.BigInteger()),
        sa.Column("phash_algorithm", sa.Text()),
        *(sa.Column(column, sa.Integer()) for column in CHUNK_COLUMNS),
        sa.Column("metadata", sa.JSON().with_variant(JSONB(), "postgresql")),
        sa.Column("metadata_json", sa.Text()),
        sa.Column("warnings", sa.Text()),
        sa.Column("make", sa.Text()),
        sa.Column("model", sa.Text()),
        sa.Column("lens", sa.Text()),
        sa.Column("taken_at", sa.DateTime(timezone=False)),
        sa.Column("orientation", sa.Integer()),
        sa.Column("iso", sa.Integer()),
        sa.Column("exposure_time", sa.Float()),
        sa.Column("f_number", sa.Float()),
        sa.Column("focal_length", sa.Float()),
        sa.Column("gps_latitude", sa.Float()),
        sa.Column("gps_longitude", sa.Float()),
        sa.UniqueConstraint("url", name="uq_images_url"),
        sa.CheckConstraint(
            "status IN ('pending', 'ok', 'failed', 'skipped')", name="ck_images_status"
        ),
    )
    op.create_index("ix_images_status", "images", ["status"])
    op.create_index("ix_images_sha256", "images", ["sha256"])
    op.create_index("ix_images_format", "images", ["format"])
    op.create_index("ix_images_make_model", "images", ["make", "model"])
    op.create_index("ix_images_taken_at", "images", ["taken_at"])
    for column in CHUNK_COLUMNS:
        op.create_index(
            f"ix_images_{column}", "images", [column, "phash"], postgresql_include=["id"]
        )
    op.execute(hex_view_sql(op.get_bind().dialect.name))


def downgrade() -> None:
    op.execute("DROP VIEW images_hex")
    op.drop_table("images")
