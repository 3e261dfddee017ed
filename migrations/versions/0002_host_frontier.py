"""The host-aware frontier: URL keys of any length, each row's host, hosts and crawlers.

- ``images.url_hash`` (a digest of the URL) becomes the unique key instead of ``url``:
  PostgreSQL's btree refuses index entries over ~2.7 KB, and signed CDN URLs are longer.
- ``images.host`` is the host a row is scheduled under, with a partial index over the
  pending rows, so that a crawler claims one host's URLs without scanning the others.
- ``hosts``: each host's shared politeness (next request time, backoff, Crawl-delay) and
  the crawler that holds it; ``crawlers``: running crawlers and their heartbeats.

Existing rows get their key and host here, in batches.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from crawler.models import hex_view_sql, url_key
from crawler.seeds import host_of

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILL_BATCH = 10_000
PENDING = sa.text("status = 'pending'")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def upgrade() -> None:
    op.execute("DROP VIEW images_hex")
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("url_hash", sa.LargeBinary()))
        batch.add_column(sa.Column("host", sa.Text()))
    _fill_keys_and_hosts()
    with op.batch_alter_table("images") as batch:
        batch.alter_column("url_hash", existing_type=sa.LargeBinary(), nullable=False)
        batch.drop_constraint("uq_images_url", type_="unique")
        batch.create_unique_constraint("uq_images_url_hash", ["url_hash"])
    op.create_index(
        "ix_images_pending_host",
        "images",
        ["host", "id"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )
    op.create_index(
        "ix_images_pending_claimed_by",
        "images",
        ["claimed_by"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )
    _create_hosts_and_crawlers()
    _create_hex_view()


def _fill_keys_and_hosts() -> None:
    connection = op.get_bind()
    images = sa.table(
        "images",
        *(sa.column(name) for name in ("id", "url", "url_hash", "host")),
    )
    update = (
        sa.update(images)
        .where(images.c.id == sa.bindparam("row_id"))
        .values(url_hash=sa.bindparam("key"), host=sa.bindparam("row_host"))
    )
    last_id = 0
    while True:
        rows = connection.execute(
            sa.select(images.c.id, images.c.url)
            .where(images.c.id > last_id)
            .order_by(images.c.id)
            .limit(FILL_BATCH)
        ).all()
        if not rows:
            return
        connection.execute(
            update,
            [
                {
                    "row_id": row.id,
                    "key": url_key(row.url),
                    "row_host": host_of(row.url),
                }
                for row in rows
            ],
        )
        last_id = rows[-1].id


def _create_hosts_and_crawlers() -> None:
    timestamp = sa.DateTime(timezone=True)
    hosts = op.create_table(
        "hosts",
        sa.Column("host", sa.Text(), primary_key=True),
        sa.Column("owner", sa.Text()),
        sa.Column("next_fetch_at", timestamp, nullable=False),
        sa.Column("backoff_until", timestamp),
        sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("crawl_delay", sa.Float()),
        sa.Column("seconds_per_fetch", sa.Float()),
        sa.Column("work_version", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("done_version", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.create_index(
        "ix_hosts_with_work",
        "hosts",
        ["next_fetch_at"],
        postgresql_where=sa.text("work_version > done_version"),
        sqlite_where=sa.text("work_version > done_version"),
    )
    op.create_table(
        "crawlers",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("machine", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", timestamp, nullable=False),
        sa.Column("heartbeat_at", timestamp, nullable=False),
    )
    assert hosts is not None
    pending_hosts = op.get_bind().execute(
        sa.text("SELECT DISTINCT host FROM images WHERE status = 'pending' AND host IS NOT NULL")
    )
    rows = [
        {"host": host, "next_fetch_at": EPOCH, "work_version": 1, "done_version": 0}
        for (host,) in pending_hosts
    ]
    if rows:
        op.bulk_insert(hosts, rows)


def _create_hex_view() -> None:
    op.execute(hex_view_sql(op.get_bind().dialect.name))


def downgrade() -> None:
    op.execute("DROP VIEW images_hex")
    op.drop_table("crawlers")
    op.drop_index("ix_hosts_with_work", table_name="hosts")
    op.drop_table("hosts")
    op.drop_index("ix_images_pending_claimed_by", table_name="images")
    op.drop_index("ix_images_pending_host", table_name="images")
    with op.batch_alter_table("images") as batch:
        batch.drop_constraint("uq_images_url_hash", type_="unique")
        batch.create_unique_constraint("uq_images_url", ["url"])
        batch.drop_column("host")
        batch.drop_column("url_hash")
    _create_hex_view()
