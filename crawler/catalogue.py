"""Open the catalogue database named by a URL or a path and keep its schema up to date.

SQLite (the default, a file in the working directory) and PostgreSQL share one schema, built
by the Alembic migrations packaged as ``crawler.migrations``. Opening a catalogue upgrades it
to the newest revision, or, with ``upgrade=False``, refuses a database that is behind; with
``create=False`` (the read-only commands) it refuses one that does not exist yet.

A catalogue at the newest revision opens without importing Alembic: its ``alembic_version``
row is compared with ``SCHEMA_HEAD`` (a test keeps that equal to the migrations' head).
"""

import re
import sqlite3
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

import sqlalchemy as sa

from crawler.config import DEFAULT_DATABASE_URL
from crawler.errors import CatalogueError, ConfigError

if TYPE_CHECKING:
    from alembic.config import Config

# The newest migration's revision: the one every catalogue is brought to.
SCHEMA_HEAD: Final = "0005"
SUPPORTED_DIALECTS: Final = ("sqlite", "postgresql")
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
POSTGRESQL_CONNECT_TIMEOUT: Final = 10  # seconds
# Key of the PostgreSQL advisory lock that lets one process at a time run the migrations.
MIGRATION_LOCK_KEY: Final = 0x6372_6177_6C65_72  # "crawler"
POSTGRESQL_EXTRA_HINT: Final = "pip install 'image-metadata-crawler[postgresql]'"
_HASH_MASK: Final = (1 << 64) - 1
_URL_SCHEME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_IN_MEMORY: Final = ("", ":memory:")


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
    """``url`` parsed, with plain ``postgresql://`` (and ``postgres://``) mapped to psycopg 3;
    text without a ``scheme://`` is the path of a SQLite file."""
    text = url.strip()
    if not _URL_SCHEME.match(text):
        return sa.URL.create("sqlite", database=text)
    try:
        parsed = sa.make_url(text)
    except (sa.exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigError(
            f"database.url: {url!r} is not a database URL; "
            "use sqlite:///PATH, a plain PATH or postgresql://USER@HOST/NAME"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in SUPPORTED_DIALECTS:
        raise ConfigError(
            f"database.url: {parsed.get_backend_name()!r} is not supported; "
            "use sqlite:///PATH, a plain PATH or postgresql://USER@HOST/NAME"
        )
    return parsed


def sqlite_file(url: sa.URL) -> Path | None:
    """The file a SQLite URL names; None for another database, an in-memory one, or a URI
    filename (``?uri=true``), whose file SQLite itself interprets."""
    if url.get_backend_name() != "sqlite" or url.database is None or url.database in _IN_MEMORY:
        return None
    if url.query.get("uri") == "true":
        return None
    return Path(url.database)


def create_catalogue_engine(url: str) -> sa.Engine:
    """An engine for ``url``; SQLite connections get WAL, a busy timeout, foreign keys and
    the ``hamming(a, b)`` function that near-duplicate search needs."""
    parsed = database_url(url)
    # JIT compilation costs 10-15 ms a query (measured at 10M rows), more than it ever saves on
    # the catalogue's index lookups; PostgreSQL turns it on by a cost estimate. A server that
    # does not answer at all must not hold a connection attempt for the kernel's minutes.
    options: dict[str, object] = {}
    if parsed.get_backend_name() == "postgresql":
        options = {"options": "-c jit=off", "connect_timeout": POSTGRESQL_CONNECT_TIMEOUT}
    try:
        engine = sa.create_engine(parsed, connect_args=options)
    except ImportError as exc:
        if exc.name == "psycopg":
            raise ConfigError(
                f"database.url: PostgreSQL needs the psycopg package: {POSTGRESQL_EXTRA_HINT}"
            ) from None
        raise ConfigError(f"database.url: cannot use {url!r}: {exc}") from None
    except sa.exc.ArgumentError as exc:  # SQLAlchemy's text goes on for lines
        raise ConfigError(f"database.url: cannot use {url!r}: {database_problem(exc)}") from None
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


def open_catalogue(
    url: str = DEFAULT_DATABASE_URL, *, upgrade: bool = True, create: bool = True
) -> Catalogue:
    """The catalogue at ``url`` (a database URL or the path of a SQLite file), brought up to
    the newest schema. ``upgrade=False``: raise ``CatalogueError`` when it is behind instead.
    ``create=False``: raise ``CatalogueError`` when there is no catalogue there yet (no such
    SQLite file, or a database without the crawler's tables) rather than making one."""
    if not create:
        _require_existing_file(database_url(url))
    catalogue = Catalogue(create_catalogue_engine(url))
    try:
        current = current_revision(catalogue)
        if current != SCHEMA_HEAD:
            if current is None and not create:
                raise CatalogueError(
                    f"no catalogue at {catalogue.url}: the database has no crawler tables; "
                    "`crawler run SEEDS` or `crawler db upgrade` makes one"
                )
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


def _require_existing_file(url: sa.URL) -> None:
    """Refuse a SQLite file that does not exist before connecting, which would create it."""
    if url.get_backend_name() == "sqlite" and (url.database or "") in _IN_MEMORY:
        raise CatalogueError("no catalogue in an in-memory SQLite database: give a file")
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise CatalogueError(
            f"no catalogue at {path}: the file does not exist "
            "(`crawler run SEEDS` or `crawler db upgrade` makes one)"
        )


def current_revision(catalogue: Catalogue) -> str | None:
    """The schema revision the database is at; ``None`` for an empty database. Read with one
    query, not Alembic's machinery, which would cost its import on every command."""
    with _connect(catalogue) as connection:
        if not sa.inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def head_revision() -> str:
    """The newest revision among the packaged migrations, as Alembic finds it."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, "crawler.migrations has no revisions"
    return head


def upgrade_catalogue(catalogue: Catalogue) -> tuple[str | None, str]:
    """Apply every pending migration; returns the revisions before and after."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.util import CommandError

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
        after = MigrationContext.configure(connection).get_current_revision()
    assert after is not None
    return before, after


def _alembic_config() -> "Config":
    from alembic.config import Config

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
