"""Indexes for the page's grid: every filter's index ends in ``id``, and ``size`` has one, so
that a sorted, filtered page is a walk down one index (keyset paging) on both databases.

SQLite's indexes already end in the rowid; PostgreSQL's do not, so without ``id`` a page of
``status = 'ok'`` newest first would sort every matching row.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

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


def upgrade() -> None:
    for name, (_, columns) in WIDENED.items():
        op.drop_index(name, table_name="images")
        op.create_index(name, "images", columns)
    op.create_index("ix_images_size", "images", ["size", "id"])


def downgrade() -> None:
    op.drop_index("ix_images_size", table_name="images")
    for name, (columns, _) in WIDENED.items():
        op.drop_index(name, table_name="images")
        op.create_index(name, "images", columns)
