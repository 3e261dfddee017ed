"""Indexes for the page's grid: every filter's index ends in ``id``, and ``size`` has one, so
that a sorted, filtered page is a walk down one index (keyset paging) on both databases, and
``(make, model, taken_at, id)`` for one camera's photos by date taken (reading all 44,000 of
a common camera's rows to sort them took 140 ms, warm, on 1,000,000 rows); and
a partial index of the failed and skipped rows' reasons, for the summary (reading the rows
themselves took 17 s on a cold 1,000,000-row SQLite catalogue, the index 10 ms).

SQLite's indexes already end in the rowid; PostgreSQL's do not, so without ``id`` a page of
``status = 'ok'`` newest first would sort every matching row.

On PostgreSQL, statistics of how the filtered columns go together (a model belongs to one
make; only ok rows have a format): taking them as independent, the planner thought a common
camera had a fifth of its rows and read all 44,000 of them (0.8 s) where walking the date
index needed 1,800 (34 ms), on 1,000,000 rows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# name: (columns before, columns after)
WIDENED = {
    "ix_images_status": (["status"], ["status", "id"]),
    "ix_images_format": (["format"], ["format", "id"]),
    "ix_images_make_model": (["make", "model"], ["make", "model", "id"]),
    "ix_images_taken_at": (["taken_at"], ["taken_at", "id"]),
}


STATISTICS = "st_images_filters"
FAILED_OR_SKIPPED = sa.text("status IN ('failed', 'skipped')")


def upgrade() -> None:
    for name, (_, columns) in WIDENED.items():
        op.drop_index(name, table_name="images")
        op.create_index(name, "images", columns)
    op.create_index("ix_images_size", "images", ["size", "id"])
    op.create_index("ix_images_camera_taken_at", "images", ["make", "model", "taken_at", "id"])
    op.create_index(
        "ix_images_failures",
        "images",
        ["status", "reason"],
        postgresql_where=FAILED_OR_SKIPPED,
        sqlite_where=FAILED_OR_SKIPPED,
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE STATISTICS {STATISTICS} (dependencies, mcv) "
            "ON status, format, make, model FROM images"
        )
        op.execute("ANALYZE images")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP STATISTICS {STATISTICS}")
    op.drop_index("ix_images_failures", table_name="images")
    op.drop_index("ix_images_camera_taken_at", table_name="images")
    op.drop_index("ix_images_size", table_name="images")
    for name, (columns, _) in WIDENED.items():
        op.drop_index(name, table_name="images")
        op.create_index(name, "images", columns)
