"""Fixtures shared by the whole suite.

``db_url`` runs a test once on SQLite and once on the real PostgreSQL server, each time on a
fresh, empty database. Without a reachable PostgreSQL the PostgreSQL half skips on a
developer's machine and FAILS in CI (``CI=true``), so a broken database never passes silently.
"""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

POSTGRES_ADMIN_URL = os.environ.get(
    "CRAWLER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CORPUS = SHARED / "corpus"
EXPECTED = SHARED / "conformance" / "expected.jsonl"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
IN_CI = os.environ.get("CI", "").lower() == "true"


def require_shared() -> None:
    """Skip a test that needs ../shared when it is absent; in CI, fail instead."""
    if not CORPUS.is_dir() or not EXPECTED.is_file():
        if IN_CI:
            pytest.fail(f"{SHARED} is missing: CI must have ../shared beside the checkout")
        pytest.skip(f"{SHARED} is not beside the checkout")


def _postgres_admin_engine() -> sa.Engine:
    engine = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        message = f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable: {exc.orig}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return engine


def new_postgres_database() -> tuple[str, sa.Engine, str]:
    """Create an empty scratch database; returns its URL, the admin engine and its name."""
    admin = _postgres_admin_engine()
    name = f"crawler_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=name)
    return url.render_as_string(hide_password=False), admin, name


def drop_postgres_database(admin: sa.Engine, name: str) -> None:
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a fresh, empty catalogue database, on SQLite and then on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalogue.db'}"
        return
    url, admin, name = new_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(admin, name)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database alone, for tests of PostgreSQL-only behaviour."""
    url, admin, name = new_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(admin, name)
