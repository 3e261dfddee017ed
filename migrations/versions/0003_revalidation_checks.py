"""Revalidation results in columns of their own, so that a failed ``--refresh`` keeps the
stored copy: its metadata, status and fetch stay, and the check is recorded beside them.

- ``checked_at``: when the stored copy was last revalidated;
- ``check_status``: what that found: ``ok`` (not modified, or fetched again and stored),
  ``failed`` or ``skipped`` (the copy was kept);
- ``check_reason``, ``check_error``, ``check_http_status``: why, the message, the HTTP status.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from crawler.models import hex_view_sql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECK_COLUMNS = ("checked_at", "check_status", "check_reason", "check_error", "check_http_status")


def upgrade() -> None:
    # The view lists the table's columns as they were when it was made (on PostgreSQL).
    op.execute("DROP VIEW images_hex")
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("checked_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("check_status", sa.Text()))
        batch.add_column(sa.Column("check_reason", sa.Text()))
        batch.add_column(sa.Column("check_error", sa.Text()))
        batch.add_column(sa.Column("check_http_status", sa.Integer()))
    op.execute(hex_view_sql(op.get_bind().dialect.name))


def downgrade() -> None:
    op.execute("DROP VIEW images_hex")
    with op.batch_alter_table("images") as batch:
        for name in reversed(CHECK_COLUMNS):
            batch.drop_column(name)
    op.execute(hex_view_sql(op.get_bind().dialect.name))
