"""The shared frontier in the catalogue, on SQLite and PostgreSQL: leases, hosts, claims,
and the migration that brings a catalogue of the first schema to it."""

from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from crawler.catalogue import Catalogue, _alembic_config, open_catalogue
from crawler.frontier import (
    CrawlerLease,
    DatabaseClock,
    HostState,
    acquire_hosts,
    add_seeds,
    claim_rows,
    forget_dead_local_crawlers,
    give_up_host,
    hosts_share,
    release,
    release_host,
)
from crawler.models import crawlers, hosts, images, url_key
from crawler.seeds import iter_seeds

LEASE = 30.0


def seed(catalogue: Catalogue, tmp_path: Path, urls: list[str]) -> None:
    path = tmp_path / "seeds.txt"
    path.write_text("".join(f"{url}\n" for url in urls))
    add_seeds(catalogue, iter_seeds(path))


def lease(catalogue: Catalogue, name: str) -> CrawlerLease:
    crawler = CrawlerLease(catalogue, name, LEASE, DatabaseClock())
    crawler.register()
    return crawler


def claim(catalogue: Catalogue, crawler: CrawlerLease, host: str, limit: int = 10) -> list[str]:
    now = crawler.clock.now()
    claimed = claim_rows(catalogue, crawler.id, {host: limit}, now, crawler.live_since(now))
    return [c.url for c in claimed[host].claims]


def lapse(catalogue: Catalogue, crawler: CrawlerLease) -> None:
    """As if ``crawler`` had stopped beating a lease ago."""
    with catalogue.engine.begin() as connection:
        connection.execute(
            sa.update(crawlers)
            .where(crawlers.c.id == crawler.id)
            .values(heartbeat_at=crawler.clock.now() - timedelta(seconds=LEASE + 1))
        )


def state(crawler: CrawlerLease) -> HostState:
    return HostState(crawler.clock.now(), None, 0, None, None)


def test_a_live_crawlers_claims_are_its_own_and_a_lapsed_ones_are_free(
    db_url: str, tmp_path: Path
) -> None:
    with open_catalogue(db_url) as catalogue:
        seed(catalogue, tmp_path, [f"https://a.test/{n}.jpg" for n in range(4)])
        first, second = lease(catalogue, "first"), lease(catalogue, "second")
        mine = claim(catalogue, first, "a.test", 2)
        theirs = claim(catalogue, second, "a.test")
        assert len(mine) == 2 and set(theirs).isdisjoint(mine)
        assert claim(catalogue, first, "a.test") == []  # nothing claimed twice, by anyone
        assert first.renew()
        lapse(catalogue, first)
        assert not first.renew()  # a lapsed lease is not renewed: what it held may be gone
        assert sorted(claim(catalogue, second, "a.test")) == sorted(mine)


def test_a_dead_local_crawler_is_forgotten_at_once(db_url: str, tmp_path: Path) -> None:
    with open_catalogue(db_url) as catalogue:
        seed(catalogue, tmp_path, ["https://a.test/1.jpg"])
        dead = lease(catalogue, "dead")
        claimed = claim(catalogue, dead, "a.test")
        assert forget_dead_local_crawlers(catalogue, is_alive=lambda pid: False) == 1
        assert claim(catalogue, lease(catalogue, "next"), "a.test") == claimed


def test_a_host_is_held_by_one_crawler_at_a_time(db_url: str, tmp_path: Path) -> None:
    with open_catalogue(db_url) as catalogue:
        seed(catalogue, tmp_path, [f"https://{h}.test/1.jpg" for h in "abc"])
        first, second = lease(catalogue, "first"), lease(catalogue, "second")
        taken = {r.host for r in acquire_hosts(catalogue, first.id, 2, first.live_since())}
        others = {r.host for r in acquire_hosts(catalogue, second.id, 5, second.live_since())}
        assert len(taken) == 2 and others == {"a.test", "b.test", "c.test"} - taken
        lapse(catalogue, first)
        again = acquire_hosts(catalogue, second.id, 5, second.live_since())
        assert {r.host for r in again} == taken


def test_a_host_found_empty_has_work_again_when_seeds_arrive(db_url: str, tmp_path: Path) -> None:
    with open_catalogue(db_url) as catalogue:
        seed(catalogue, tmp_path, ["https://a.test/1.jpg"])
        crawler = lease(catalogue, "crawler")
        [record] = acquire_hosts(catalogue, crawler.id, 5, crawler.live_since())
        now = crawler.clock.now()
        first = claim_rows(catalogue, crawler.id, {"a.test": 10}, now, crawler.live_since())
        version = first["a.test"].work_version
        seed(catalogue, tmp_path, ["https://a.test/2.jpg"])  # while the host is held
        release_host(catalogue, crawler.id, "a.test", state(crawler), done_version=version)
        assert [r.host for r in acquire_hosts(catalogue, crawler.id, 5, crawler.live_since())] == [
            "a.test"
        ]
        assert record.work_version == version
        assert claim(catalogue, crawler, "a.test") == ["https://a.test/2.jpg"]
        now = crawler.clock.now()
        empty = claim_rows(catalogue, crawler.id, {"a.test": 10}, now, crawler.live_since())
        release_host(catalogue, crawler.id, "a.test", state(crawler), empty["a.test"].work_version)
        assert acquire_hosts(catalogue, crawler.id, 5, crawler.live_since()) == []
        assert hosts_share(catalogue, crawler.live_since()) == (1, 0)


def give_up(catalogue: Catalogue, crawler: CrawlerLease, host: str) -> tuple[int, datetime]:
    """The host is down: how many rows failed, and when."""
    now = crawler.clock.now()
    failed = give_up_host(
        catalogue,
        crawler.id,
        host,
        state(crawler),
        reason="connection_error",
        error="down",
        now=now,
        live_since=crawler.live_since(now),
    )
    return failed, now


def test_a_host_given_up_fails_the_rows_nobody_holds(db_url: str, tmp_path: Path) -> None:
    with open_catalogue(db_url) as catalogue:
        seed(catalogue, tmp_path, [f"https://a.test/{n}.jpg" for n in range(5)])
        crawler = lease(catalogue, "crawler")
        acquire_hosts(catalogue, crawler.id, 1, crawler.live_since())
        held = claim(catalogue, crawler, "a.test", 2)
        failed, _ = give_up(catalogue, crawler, "a.test")
        with catalogue.engine.connect() as connection:
            statuses = dict(connection.execute(sa.select(images.c.url, images.c.status)).all())
        assert failed == 3
        assert {url for url, status in statuses.items() if status == "pending"} == set(held)
        released = release(catalogue, crawler.id)
        assert released == 2


def test_a_host_given_up_during_a_refresh_keeps_its_stored_copies(
    db_url: str, tmp_path: Path
) -> None:
    urls = [f"https://a.test/{n}.jpg" for n in range(2)]
    with open_catalogue(db_url) as catalogue:
        seed(catalogue, tmp_path, urls)
        with catalogue.engine.begin() as connection:  # the first was crawled, and requeued
            connection.execute(
                sa.update(images)
                .where(images.c.url == urls[0])
                .values(metadata_json='{"format": "jpg"}', format="jpg", sha256="ab" * 32)
            )
        crawler = lease(catalogue, "crawler")
        acquire_hosts(catalogue, crawler.id, 1, crawler.live_since())
        failed, now = give_up(catalogue, crawler, "a.test")
        with catalogue.engine.connect() as connection:
            rows = {row.url: row for row in connection.execute(sa.select(images))}
    assert failed == 2
    kept, new = rows[urls[0]], rows[urls[1]]
    assert (kept.status, kept.reason, kept.sha256, kept.fetched_at) == ("ok", None, "ab" * 32, None)
    assert (kept.check_status, kept.check_reason, kept.checked_at) == (
        "failed",
        "connection_error",
        now,
    )
    assert (new.status, new.reason, new.check_status) == ("failed", "connection_error", None)


def test_the_migration_keys_and_schedules_a_catalogue_of_the_first_schema(
    db_url: str,
) -> None:
    config = _alembic_config()
    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        first_schema = sa.table(
            "images", *(sa.column(name) for name in ("url", "status", "reason"))
        )
        connection.execute(
            sa.insert(first_schema),
            [
                {"url": "https://a.test/1.jpg", "status": "pending", "reason": None},
                {"url": "https://b.test/2.jpg", "status": "ok", "reason": None},
                {"url": "not a url at all", "status": "failed", "reason": "bad_url"},
            ],
        )
    engine.dispose()

    with open_catalogue(db_url) as catalogue, catalogue.engine.begin() as connection:
        rows = connection.execute(sa.select(images.c.url, images.c.url_hash, images.c.host))
        assert {row.url: (row.url_hash, row.host) for row in rows} == {
            "https://a.test/1.jpg": (url_key("https://a.test/1.jpg"), "a.test"),
            "https://b.test/2.jpg": (url_key("https://b.test/2.jpg"), "b.test"),
            "not a url at all": (url_key("not a url at all"), None),
        }
        with_work = connection.execute(
            sa.select(hosts.c.host).where(hosts.c.work_version > hosts.c.done_version)
        )
        assert set(with_work.scalars()) == {"a.test"}
        duplicate = {"url": "https://a.test/1.jpg", "status": "pending"}
        # The key is still unique, and the status still checked.
        with pytest.raises(sa.exc.IntegrityError), connection.begin_nested():
            connection.execute(
                sa.insert(images).values(duplicate | {"url_hash": url_key(duplicate["url"])})
            )
        with pytest.raises(sa.exc.IntegrityError), connection.begin_nested():
            connection.execute(sa.insert(images).values(url="x", url_hash=b"x", status="bogus"))
