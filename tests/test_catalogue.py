"""The catalogue: schema migrations, opening by URL, and storing crawl results (both databases)."""

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from crawler.catalogue import (
    SCHEMA_HEAD,
    _alembic_config,
    create_catalogue_engine,
    current_revision,
    head_revision,
    open_catalogue,
)
from crawler.errors import CatalogueError, ConfigError
from crawler.extract import extract
from crawler.models import CHUNK_COLUMNS, images, metadata
from crawler.query import export, show
from crawler.store import CrawlResult, store_results
from tests.conftest import CORPUS, EXPECTED, require_shared

CANON_40D = {
    "height": 68,
    "width": 100,
    "size": 7958,
    "format": "jpg",
    "hasColorProfile": True,
    "quality": 65,
    "density": 72,
    "hasTransparency": False,
    "pHash": "a56a1332cf90e299",
    "exif": {
        "image": {"Make": "Canon", "Model": "Canon EOS 40D", "Orientation": 1},
        "thumbnail": {},
        "exif": {
            "ExposureTime": 0.00625,
            "FNumber": 7.1,
            "ISO": 100,
            "DateTimeOriginal": "2008:05:30 15:56:01",
            "FocalLength": 135,
            "LensModel": "EF70-200mm f/4L USM",
        },
        "gps": {
            "GPSLatitudeRef": "S",
            "GPSLatitude": [33, 51, 54.36],
            "GPSLongitudeRef": "W",
            "GPSLongitude": [151, 12, 36],
        },
        "interoperability": {},
        "makernote": {},
    },
}


def ok_result(url: str, metadata: dict, **fields: object) -> CrawlResult:
    return CrawlResult(
        url=url,
        status="ok",
        http_status=200,
        content_type="image/jpeg",
        sha256="ab" * 32,
        fetched_at=datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
        metadata=metadata,
        hash_algorithm="imagekit",
        **fields,
    )


def fetch_row(catalogue, url: str) -> sa.Row:
    with catalogue.engine.connect() as connection:
        return connection.execute(sa.select(images).where(images.c.url == url)).one()


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    config = _alembic_config()
    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    tables = lambda: set(sa.inspect(engine).get_table_names())  # noqa: E731
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    assert {"images", "alembic_version"} <= tables()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert "images" not in tables()
    assert "images_hex" not in sa.inspect(engine).get_view_names()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    assert "images_hex" in sa.inspect(engine).get_view_names()
    engine.dispose()


def test_models_match_the_migrations(db_url: str) -> None:
    with open_catalogue(db_url) as catalogue, catalogue.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


def test_the_schema_head_constant_is_the_newest_migration() -> None:
    # Opening a catalogue compares its revision with SCHEMA_HEAD instead of asking Alembic;
    # a new migration must move the constant too.
    assert head_revision() == SCHEMA_HEAD


def test_a_catalogue_at_head_opens_without_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    open_catalogue(url).close()
    script = (
        "import sys; from crawler.catalogue import open_catalogue; "
        f"open_catalogue({url!r}, create=False).close(); "
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'alembic'))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")


def test_chunk_indexes_hold_the_id_on_postgresql(postgres_url: str) -> None:
    with open_catalogue(postgres_url) as catalogue:
        indexes = {
            index["name"]: index for index in sa.inspect(catalogue.engine).get_indexes("images")
        }
    for column in CHUNK_COLUMNS:
        index = indexes[f"ix_images_{column}"]
        assert index["column_names"] == [column, "phash"]
        assert index["dialect_options"]["postgresql_include"] == ["id"]


def test_a_plain_path_is_a_sqlite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_catalogue("photos.db") as catalogue:
        assert catalogue.dialect == "sqlite"
    assert (tmp_path / "photos.db").is_file()
    with open_catalogue(str(tmp_path / "photos.db"), create=False) as catalogue:
        assert catalogue.url == f"sqlite:///{tmp_path / 'photos.db'}"


def test_without_create_a_missing_catalogue_is_refused_and_not_made(
    db_url: str, tmp_path: Path
) -> None:
    missing = tmp_path / "corpsu.db"
    for url in (str(missing), f"sqlite:///{missing}"):
        with pytest.raises(CatalogueError, match=rf"^no catalogue at {missing}: the file does"):
            open_catalogue(url, create=False)
    assert not missing.exists()
    with pytest.raises(CatalogueError, match="in-memory"):
        open_catalogue("sqlite://", create=False)
    # An existing database without the crawler's tables is refused too, and left empty.
    engine = create_catalogue_engine(db_url)
    with engine.connect():
        pass  # makes the SQLite file
    with pytest.raises(CatalogueError, match="has no crawler tables"):
        open_catalogue(db_url, create=False)
    assert sa.inspect(engine).get_table_names() == []
    engine.dispose()


def test_open_without_upgrade_names_the_command(db_url: str) -> None:
    with pytest.raises(CatalogueError, match=r"revision none .*run `crawler db upgrade`"):
        open_catalogue(db_url, upgrade=False)
    with open_catalogue(db_url) as catalogue:
        assert current_revision(catalogue) == head_revision()
    with open_catalogue(db_url, upgrade=False) as catalogue:
        assert catalogue.dialect in ("sqlite", "postgresql")


def test_plain_postgresql_url_uses_psycopg(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with open_catalogue(plain) as catalogue:
        assert catalogue.dialect == "postgresql"
        assert catalogue.engine.driver == "psycopg"


def test_unsupported_or_broken_urls_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="not supported"):
        open_catalogue("mysql://localhost/images")
    with pytest.raises(ConfigError, match="not a database URL; use sqlite:///PATH, a plain"):
        open_catalogue("postgresql://host:notaport/images")
    with pytest.raises(ConfigError, match="cannot use 'sqlite://x:y@/': Invalid SQLite") as raised:
        open_catalogue("sqlite://x:y@/")
    assert "\n" not in str(raised.value)


def test_postgresql_without_its_extra_installed_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as in an install without the extra
    with pytest.raises(ConfigError) as raised:
        open_catalogue("postgresql://postgres@127.0.0.1/images")
    assert str(raised.value) == (
        "database.url: PostgreSQL needs the psycopg package: "
        "pip install 'image-metadata-crawler[postgresql]'"
    )


def test_unreachable_database_is_one_line_error() -> None:
    with pytest.raises(CatalogueError, match="cannot open catalogue at postgresql") as raised:
        open_catalogue("postgresql://nobody@127.0.0.1:1/none")
    assert "\n" not in str(raised.value)  # libpq puts its hint on a line of its own


def test_a_file_that_is_not_a_database_is_a_catalogue_error(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("https://example.com/a.jpg\n" * 100)  # --db pointed at the wrong file
    with pytest.raises(
        CatalogueError, match=r"^cannot open catalogue at .*: file is not a database$"
    ):
        open_catalogue(f"sqlite:///{seeds}")


def test_a_database_with_its_own_images_table_is_a_catalogue_error(db_url: str) -> None:
    engine = create_catalogue_engine(db_url)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE images (name TEXT)"))
    engine.dispose()
    with pytest.raises(
        CatalogueError, match=r"from revision None: .*already exists .*a new database"
    ):
        open_catalogue(db_url)


def test_sqlite_connections_are_prepared(tmp_path) -> None:
    with (
        open_catalogue(f"sqlite:///{tmp_path / 'c.db'}") as catalogue,
        catalogue.engine.connect() as connection,
    ):
        mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
        keys = connection.exec_driver_sql("PRAGMA foreign_keys").scalar()
        distance = connection.exec_driver_sql("SELECT hamming(-1, 0)").scalar()
    assert (mode, keys, distance) == ("wal", 1, 64)


def test_store_derives_typed_and_exif_columns(db_url: str) -> None:
    with open_catalogue(db_url) as catalogue:
        store_results(catalogue, [ok_result("https://example.com/40d.jpg", CANON_40D)])
        row = fetch_row(catalogue, "https://example.com/40d.jpg")
    assert (row.width, row.height, row.size, row.format) == (100, 68, 7958, "jpg")
    assert (row.has_color_profile, row.quality, row.density, row.has_transparency) == (
        True,
        65,
        72,
        False,
    )
    assert (row.make, row.model, row.lens) == ("Canon", "Canon EOS 40D", "EF70-200mm f/4L USM")
    assert row.taken_at == datetime(2008, 5, 30, 15, 56, 1)
    assert (row.orientation, row.iso) == (1, 100)
    assert (row.exposure_time, row.f_number, row.focal_length) == (0.00625, 7.1, 135.0)
    assert row.gps_latitude == pytest.approx(-(33 + 51 / 60 + 54.36 / 3600))
    assert row.gps_longitude == pytest.approx(-(151 + 12 / 60 + 36 / 3600))
    assert row.phash == int("a56a1332cf90e299", 16) - (1 << 64)  # top bit set: negative
    assert (row.phash_c0, row.phash_c1, row.phash_c2, row.phash_c3) == (
        0xA56A,
        0x1332,
        0xCF90,
        0xE299,
    )
    assert row.phash_algorithm == "imagekit"
    assert row.fetched_at == datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert row.first_seen_at.tzinfo is not None


def test_exif_text_is_cut_at_nul_and_junk_dates_are_dropped(db_url: str) -> None:
    metadata = json.loads(json.dumps(CANON_40D))
    metadata["exif"]["image"]["Model"] = "ION230\u0000F"
    metadata["exif"]["exif"]["DateTimeOriginal"] = "0000:00:00 00:00:00"
    metadata["exif"]["exif"]["ISO"] = [200, 0]
    metadata["exif"]["gps"]["GPSLatitude"] = [33, None, 1]
    with open_catalogue(db_url) as catalogue:
        store_results(catalogue, [ok_result("https://example.com/ion.jpg", metadata)])
        row = fetch_row(catalogue, "https://example.com/ion.jpg")
        stored = show(catalogue, "https://example.com/ion.jpg")
    assert (row.model, row.taken_at, row.iso, row.gps_latitude) == ("ION230", None, 200, None)
    assert stored["exif"]["image"]["Model"] == "ION230\u0000F"
    # PostgreSQL's JSONB cannot hold U+0000; the queryable column has U+FFFD there instead.
    nul = "\ufffd" if catalogue.dialect == "postgresql" else "\u0000"
    assert row.metadata["exif"]["image"]["Model"] == f"ION230{nul}F"


def test_text_that_is_not_utf8_is_stored_with_replacement_characters(db_url: str) -> None:
    # aiohttp decodes header bytes that are not UTF-8 as lone surrogates; one of them made
    # the whole batch fail (and, before the engine watched its writer, hung the crawl).
    result = CrawlResult(
        "https://example.com/odd.jpg",
        "failed",
        "not_an_image",
        error="served as image/\udcff",
        final_url="https://example.com/odd.jpg",
        etag='"\udcfe\ud800"',
        content_type="image/\udcff",
    )
    with open_catalogue(db_url) as catalogue:
        store_results(catalogue, [result])
        row = fetch_row(catalogue, "https://example.com/odd.jpg")
    assert (row.error, row.etag, row.content_type) == (
        "served as image/\ufffd",
        '"\ufffd\ufffd"',
        "image/\ufffd",
    )


def test_restoring_a_url_updates_its_row_and_releases_the_claim(db_url: str) -> None:
    url = "https://example.com/a.jpg"
    with open_catalogue(db_url) as catalogue:
        store_results(catalogue, [CrawlResult(url, "failed", reason="timeout", error="slow")])
        first = fetch_row(catalogue, url)
        with catalogue.engine.begin() as connection:
            connection.execute(
                images.update().values(
                    claimed_by="host:1", claimed_at=datetime.now(UTC), attempts=2
                )
            )
        store_results(catalogue, [ok_result(url, CANON_40D)])
        second = fetch_row(catalogue, url)
        with catalogue.engine.connect() as connection:
            count = connection.execute(sa.select(sa.func.count()).select_from(images)).scalar()
    assert count == 1
    assert (second.id, second.first_seen_at, second.attempts) == (first.id, first.first_seen_at, 2)
    assert (second.status, second.reason, second.error, second.width) == ("ok", None, None, 100)
    assert (second.claimed_by, second.claimed_at) == (None, None)
    assert second.updated_at >= first.updated_at


def test_batches_larger_than_one_statement_and_repeated_urls(db_url: str) -> None:
    results = [CrawlResult(f"https://example.com/{i}", "skipped") for i in range(1200)]
    results.append(CrawlResult("https://example.com/7", "failed", reason="http_404"))
    with open_catalogue(db_url) as catalogue:
        store_results(catalogue, results)
        store_results(catalogue, results)
        with catalogue.engine.connect() as connection:
            counts = dict(
                connection.execute(
                    sa.select(images.c.status, sa.func.count()).group_by(images.c.status)
                ).all()
            )
    assert counts == {"skipped": 1199, "failed": 1}


def test_unknown_status_is_refused(db_url: str) -> None:
    with open_catalogue(db_url) as catalogue, pytest.raises(CatalogueError, match="'done'"):
        store_results(catalogue, [CrawlResult("https://example.com/x", "done")])


def test_naive_fetch_time_is_refused(db_url: str) -> None:
    result = CrawlResult("https://example.com/x", "ok", fetched_at=datetime(2026, 1, 1))
    with open_catalogue(db_url) as catalogue, pytest.raises(sa.exc.StatementError, match="naive"):
        store_results(catalogue, [result])


def test_images_hex_view_prints_all_64_bits(db_url: str) -> None:
    hashes = ["0000000000000000", "ffffffffffffffff", "8000000000000001", "00000000000000ff"]
    results = [ok_result(f"https://example.com/{h}", {"pHash": h}) for h in hashes]
    results.append(CrawlResult("https://example.com/none", "failed"))
    with open_catalogue(db_url) as catalogue:
        store_results(catalogue, results)
        with catalogue.engine.connect() as connection:
            shown = (
                connection.execute(sa.text("SELECT phash_hex FROM images_hex ORDER BY id"))
                .scalars()
                .all()
            )
    assert shown == [*hashes, None]


def test_corpus_metadata_round_trips_exactly(db_url: str) -> None:
    require_shared()
    objects = {}
    for line in EXPECTED.read_text().splitlines():
        entry = json.loads(line)
        if entry["ik"] is not None:
            objects[f"https://corpus.test/{entry['file']}"] = entry["ik"]
    results = [ok_result(url, metadata) for url, metadata in objects.items()]
    with open_catalogue(db_url) as catalogue:
        store_results(catalogue, results)
        for url, metadata in objects.items():
            assert json.dumps(show(catalogue, url)) == json.dumps(metadata), url


def test_show_and_export_return_the_extracted_object_exactly(db_url: str) -> None:
    # ION230 has a NUL inside an EXIF string ("ION230\u0000F"); Konica's JPEG has 53 EXIF
    # keys, whose order JSONB would change.
    require_shared()
    names = ["WWL_(Polaroid)_ION230.jpg", "Konica_Minolta_DiMAGE_Z3.jpg"]
    extracted = {
        f"https://corpus.test/{name}": extract((CORPUS / "exif-samples/jpg" / name).read_bytes())
        for name in names
    }
    assert "\\u0000" in json.dumps(extracted[f"https://corpus.test/{names[0]}"].metadata)
    results = [
        ok_result(url, extraction.metadata, warnings=extraction.warnings)
        for url, extraction in extracted.items()
    ]
    with open_catalogue(db_url) as catalogue:
        store_results(catalogue, results)
        exported = {row["url"]: row["metadata"] for row in export(catalogue, "jsonl")}
        for image_id, (url, extraction) in enumerate(extracted.items(), start=1):
            expected = json.dumps(extraction.metadata)
            assert json.dumps(show(catalogue, url)) == expected
            assert json.dumps(show(catalogue, image_id)) == expected
            assert json.dumps(exported[url]) == expected


def test_claim_times_come_back_timezone_aware(db_url: str) -> None:
    claimed = datetime.now(UTC) - timedelta(minutes=5)
    with open_catalogue(db_url) as catalogue:
        store_results(catalogue, [CrawlResult("https://example.com/p", "pending")])
        with catalogue.engine.begin() as connection:
            connection.execute(images.update().values(claimed_at=claimed))
        assert fetch_row(catalogue, "https://example.com/p").claimed_at == claimed
