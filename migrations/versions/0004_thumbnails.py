"""Thumbnails: one small WebP per image in a table of its own (``images`` scans stay lean).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    image_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "thumbnails",
        sa.Column(
            "image_id",
            image_id,
            sa.ForeignKey("images.id", ondelete="CASCADE", name="fk_thumbnails_image_id"),
            primary_key=True,
        ),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("webp", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("thumbnails")
