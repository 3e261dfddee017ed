"""Alembic environment for the catalogue, used by ``crawler db upgrade`` and by ``alembic``.

``crawler.catalogue`` runs the migrations on a connection it passes in
``config.attributes["connection"]``. The ``alembic`` command line instead takes the database
from ``-x url=URL``, else ``$CRAWLER_DATABASE_URL``, else ``sqlalchemy.url`` in alembic.ini.
"""

import os

from alembic import context
from sqlalchemy.engine import Connection

from crawler.catalogue import create_catalogue_engine
from crawler.config import DATABASE_URL_ENV, DEFAULT_DATABASE_URL
from crawler.models import metadata

config = context.config
target_metadata = metadata


def _command_line_url() -> str:
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get(DATABASE_URL_ENV)
        or config.get_main_option("sqlalchemy.url")
        or DEFAULT_DATABASE_URL
    )


def _run(connection: Connection) -> None:
    # Batch mode lets later migrations alter SQLite tables (SQLite has almost no ALTER TABLE).
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_command_line_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_catalogue_engine(_command_line_url())
    try:
        with engine.connect() as new_connection:
            _run(new_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
