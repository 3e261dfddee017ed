"""Open the catalogue database named by a URL and keep its schema up to date.

SQLite (the default, a file in the working directory) and PostgreSQL share one schema, built
by the Alembic migrations packaged as ``crawler.migrations``. Opening a catalogue upgrades it
to the newest revision, or, with ``upgrade=False``, refuses a database that is behind.
"""

import sqlite3
from importlib.resources import files
from typing import Final, Self

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from crawler.config import DEFAULT_DATABASE_URL
from crawler.errors import CatalogueError, ConfigError

SUPPORTED_DIALECTS: Final = ("sqlite", "postgresql")
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
# Key of the PostgreSQL advisory lock that lets one process at a time run the migrations.
MIGRATION_LOCK_KEY: Final = 0x6372_6177_6C65_72  # "crawler"
_HASH_MASK: Final = (1 << 64) - 1


class Catalogue:
    """An open catalogue: the SQLAlchemy engine and which database it talks to."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    @property
    def dialect(self) -> str:
        """``'sqlite'`` or ``'postgresql'``."""
        return self.engine.dialect.name

    @property
    def url(self) -> str:
        """The database URL without its password, for messages."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def database_url(url: str) -> sa.URL:
    """``url`` parsed, with plain ``postgresql://`` (and ``postgres://``) mapped to psycopg 3."""
    try:
        parsed = sa.make_url(url.strip())
    except sa.exc.ArgumentError:
        raise ConfigError(f"database.url: {url!r} is not a database URL") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in SUPPORTED_DIALECTS:
        raise ConfigError(
            f"database.url: {parsed.get_backend_name()!r} is not supported; "
            "use sqlite:///PATH or postgresql://USER@HOST/NAME"
        )
    return parsed


def create_catalogue_engine(url: str) -> sa.Engine:
    """An engine for ``url``; SQLite connections get WAL, a busy timeout, foreign keys and
    the ``hamming(a, b)`` function that near-duplicate search needs."""
    parsed = database_url(url)
    # JIT compilation costs 10-15 ms a query (measured at 10M rows), more than it ever saves on
    # the catalogue's index lookups; PostgreSQL turns it on by a cost estimate.
    options = {"options": "-c jit=off"} if parsed.get_backend_name() == "postgresql" else {}
    try:
        engine = sa.create_engine(parsed, connect_args=options)
    except (ImportError, sa.exc.ArgumentError) as exc:
        raise ConfigError(f"database.url: cannot use {url!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _prepare_sqlite_connection)
    return engine


def hamming(a: int | None, b: int | None) -> int | None:
    """Bits that differ between two 64-bit hashes stored as signed integers (SQL NULL aware)."""
    if a is None or b is None:
        return None
    return ((a ^ b) & _HASH_MASK).bit_count()


def _prepare_sqlite_connection(connection: sqlite3.Connection, _record: object) -> None:
    connection.create_function("hamming", 2, hamming, deterministic=True)
    cursor = connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def open_catalogue(url: str = DEFAULT_DATABASE_URL, *, upgrade: bool = True) -> Catalogue:
    """The catalogue at ``url``, brought up to the newest schema (``upgrade=False``: raise
    ``CatalogueError`` when it is behind instead)."""
    catalogue = Catalogue(create_catalogue_engine(url))
    try:
        current = current_revision(catalogue)
        head = head_revision()
        if current != head:
            if not upgrade:
                raise CatalogueError(
                    f"catalogue at {catalogue.url} is at revision {current or 'none (empty)'}, "
                    f"run `crawler db upgrade`"
                )
            upgrade_catalogue(catalogue)
    except BaseException:
        catalogue.close()
        raise
    return catalogue


def current_revision(catalogue: Catalogue) -> str | None:
    """The schema revision the database is at; ``None`` for an empty database."""
    with _connect(catalogue) as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, "crawler.migrations has no revisions"
    return head


def upgrade_catalogue(catalogue: Catalogue) -> tuple[str | None, str]:
    """Apply every pending migration; returns the revisions before and after."""
    with _connect(catalogue) as connection, connection.begin():
        if catalogue.dialect == "postgresql":
            # Two crawlers starting together must not both create the tables.
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        before = MigrationContext.configure(connection).get_current_revision()
        config = _alembic_config()
        config.attributes["connection"] = connection
        try:
            command.upgrade(config, "head")
        except CommandError as exc:
            raise CatalogueError(
                f"cannot upgrade catalogue at {catalogue.url} from revision {before}: {exc} "
                "(was it made by a newer crawler?)"
            ) from None
        except sa.exc.DBAPIError as exc:  # e.g. a table of another program's in the way
            problem = database_problem(exc)
            if before is None:
                problem += " (the catalogue needs a new database, or one crawler made)"
            raise CatalogueError(
                f"cannot upgrade catalogue at {catalogue.url} from revision {before}: {problem}"
            ) from None
    return before, head_revision()


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("crawler.migrations")))
    config.set_main_option("path_separator", "os")
    return config


def _connect(catalogue: Catalogue) -> sa.Connection:
    try:
        return catalogue.engine.connect()
    except sa.exc.DBAPIError as exc:  # no server, no such file, a file that is no database
        raise CatalogueError(
            f"cannot open catalogue at {catalogue.url}: {database_problem(exc)}"
        ) from None


def database_problem(exc: Exception) -> str:
    """What a database error says, on one line: the driver's message where there is one
    (SQLAlchemy's own goes on with the statement and its parameters; libpq puts hints on
    lines of their own)."""
    driver_error = getattr(exc, "orig", None)
    message = str(driver_error) if driver_error is not None else str(exc)
    return " ".join(message.split()) or type(exc).__name__
