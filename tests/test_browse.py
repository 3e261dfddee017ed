"""The page's queries (``crawler.browse``) and their endpoints, on SQLite and PostgreSQL: the
grid's keyset pages in every sort, each filter, the URL text search past its scan bound, one
image's record, the summary's counts, and a JSON 400 for every bad parameter."""

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from yarl import URL

from crawler import browse
from crawler.browse import Filters, grid, image_record, summary
from crawler.catalogue import Catalogue, open_catalogue
from crawler.models import images, url_key
from crawler.query import ImageNotFoundError, QueryError
from crawler.serve import create_app
from crawler.store import CrawlResult, store_results
from tests.serve_support import TEST_HOSTS, api_settings, serving

PARIS = {"GPSLatitudeRef": "N", "GPSLatitude": [48, 51, 29], "GPSLongitudeRef": "E",
         "GPSLongitude": [2, 17, 40]}  # fmt: skip


def metadata(size: int, fmt: str, camera: str = "", taken: str = "", gps: bool = False) -> dict:
    image = dict(zip(("Make", "Model"), camera.split("/"), strict=False)) if camera else {}
    return {
        "height": 100,
        "width": 150,
        "size": size,
        "format": fmt,
        "hasColorProfile": False,
        "quality": 90,
        "density": 72,
        "hasTransparency": False,
        "pHash": f"{size:016x}",
        "exif": {
            "image": image,
            "thumbnail": {},
            "exif": {"DateTimeOriginal": taken} if taken else {},
            "gps": PARIS if gps else {},
            "interoperability": {},
            "makernote": {},
        },
    }


# name -> (size, format, camera, date taken, GPS); stored in this order (ids 1..7).
IMAGES = {
    "a.jpg": (5_000, "jpg", "Canon/EOS 40D", "2008:05:30 15:56:01", True),
    "b.png": (90_000, "png", "", "", False),
    "c.jpg": (20_000, "jpg", "Canon/EOS 40D", "2019:12:31 23:59:59", False),
    "d.jpg": (20_000, "jpg", "Canon/PowerShot S40", "2020:01:01 00:00:00", True),
    "e_100%.jpg": (7_000_000, "jpg", "NIKON/D70", "2020:06:15 12:00:00", False),
    "f.webp": (300, "webp", "", "", False),
}
FAILED = "https://images.test/photos/gone.jpg"


def url(name: str) -> str:
    return f"https://images.test/photos/{name}"


def stored(catalogue: Catalogue) -> dict[str, int]:
    """The images above and one failed URL; returns the ids by name."""
    results = [
        CrawlResult(
            url=url(name),
            status="ok",
            sha256=f"{position:064x}",
            fetched_at=datetime(2026, 12, 1, tzinfo=UTC),
            metadata=metadata(*fields),
            hash_algorithm="imagekit",
        )
        for position, (name, fields) in enumerate(IMAGES.items())
    ]
    results.append(CrawlResult(url=FAILED, status="failed", reason="http_404", error="HTTP 404"))
    store_results(catalogue, results)
    page = grid(catalogue, limit=100)
    return {image["url"].rsplit("/", 1)[-1]: image["id"] for image in page.images}


@pytest.fixture
def catalogue(db_url: str) -> Catalogue:
    with open_catalogue(db_url) as opened:
        yield opened


def names(page: browse.GridPage, ids: dict[str, int]) -> list[str]:
    by_id = {image_id: name for name, image_id in ids.items()}
    return [by_id[image["id"]] for image in page.images]


def every_page(catalogue: Catalogue, filters: Filters, sort: str, limit: int) -> list[list[int]]:
    pages, after = [], None
    while True:
        page = grid(catalogue, filters, sort, limit, after)
        pages.append([image["id"] for image in page.images])
        if page.next is None:
            return pages
        after = page.next


@pytest.mark.parametrize(
    ("sort", "order"),
    [
        ("newest", ["f.webp", "e_100%.jpg", "d.jpg", "c.jpg", "b.png", "a.jpg"]),
        ("largest", ["e_100%.jpg", "b.png", "d.jpg", "c.jpg", "a.jpg", "f.webp"]),
        ("taken", ["e_100%.jpg", "d.jpg", "c.jpg", "a.jpg"]),
    ],
)
def test_pages_follow_the_sort_from_cursor_to_cursor(
    catalogue: Catalogue, sort: str, order: list[str]
) -> None:
    ids = stored(catalogue)
    pages = every_page(catalogue, Filters(status="ok"), sort, 2)
    assert [image_id for page in pages for image_id in page] == [ids[name] for name in order]
    assert all(len(page) == 2 for page in pages[:-1])


def test_each_filter_selects_its_images(catalogue: Catalogue) -> None:
    ids = stored(catalogue)

    def shown(**filters: Any) -> list[str]:
        return names(grid(catalogue, Filters(**filters), limit=100), ids)

    assert shown(status="failed") == ["gone.jpg"]
    assert shown(format="jpg") == ["e_100%.jpg", "d.jpg", "c.jpg", "a.jpg"]
    assert shown(make="Canon") == ["d.jpg", "c.jpg", "a.jpg"]
    assert shown(make="Canon", model="EOS 40D") == ["c.jpg", "a.jpg"]
    # Both ends of the range are whole days, included.
    assert shown(taken_from=date(2019, 12, 31), taken_to=date(2020, 1, 1)) == ["d.jpg", "c.jpg"]
    assert shown(taken_to=date(2008, 5, 30)) == ["a.jpg"]
    assert shown(taken_from=date(2020, 6, 16), taken_to=date.max) == []
    assert shown(has_gps=True) == ["d.jpg", "a.jpg"]
    assert shown(has_gps=False, status="ok") == ["f.webp", "e_100%.jpg", "c.jpg", "b.png"]
    # URL text: a substring, ASCII case ignored, % and _ as themselves.
    assert shown(url_text="PHOTOS/C") == ["c.jpg"]
    assert shown(url_text="_100%") == ["e_100%.jpg"]
    assert shown(url_text="e%") == []
    assert shown(status="ok", format="jpg", make="Canon", has_gps=True, url_text=".jpg") == [
        "d.jpg",
        "a.jpg",
    ]


def test_url_text_search_goes_on_past_each_pages_scan(
    catalogue: Catalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = stored(catalogue)
    monkeypatch.setattr(browse, "SCAN_ROWS", 2)
    # Newest first the match is the last of seven rows: each page scans two of them.
    pages = every_page(catalogue, Filters(url_text="a.JPG"), "newest", 10)
    assert pages == [[], [], [], [ids["a.jpg"]]]


def test_a_page_whose_query_overruns_covers_the_next_rows_only(
    catalogue: Catalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 20,000 photos; only the first taken has a position: finding it means reading them all.
    first_taken = datetime(2000, 1, 1)
    rows = [
        {
            "url": url(f"{number}.jpg"),
            "url_hash": url_key(url(f"{number}.jpg")),
            "status": "ok",
            "taken_at": first_taken + timedelta(hours=number),
            "gps_latitude": 1.0 if number == 0 else None,
            "gps_longitude": 1.0 if number == 0 else None,
        }
        for number in range(20_000)
    ]
    with catalogue.engine.begin() as connection:
        connection.execute(images.insert(), rows)
        first = connection.execute(
            sa.select(images.c.id).where(images.c.taken_at == first_taken)
        ).scalar_one()
    monkeypatch.setattr(browse, "EXACT_QUERY_SECONDS", 0.001)  # walking 20,000 rows: 5-20 ms
    monkeypatch.setattr(browse, "SCAN_ROWS", 5000)
    pages = every_page(catalogue, Filters(has_gps=True), "taken", 60)
    assert pages[0] == [] and len(pages) >= 2  # the next 5,000 rows held none
    assert [image_id for page in pages for image_id in page] == [first]


def test_a_cursor_of_another_sort_is_refused(catalogue: Catalogue) -> None:
    stored(catalogue)
    cursor = grid(catalogue, sort="taken", limit=1).next
    assert cursor == "2020-06-15T12:00:00,5"
    with pytest.raises(QueryError, match="after: '2020-06-15T12:00:00,5' is not a page cursor"):
        grid(catalogue, sort="largest", after=cursor)
    for bad in ("", "x", "1,2", "9" * 30, "2020-06-15T12:00:00+02:00,5"):
        with pytest.raises(QueryError, match="not a page cursor"):
            grid(catalogue, sort="taken" if "T" in bad else "newest", after=bad)


def test_the_record_of_one_image(catalogue: Catalogue) -> None:
    ids = stored(catalogue)
    record = image_record(catalogue, ids["a.jpg"])
    assert (record["url"], record["status"], record["size"], record["format"]) == (
        url("a.jpg"),
        "ok",
        5_000,
        "jpg",
    )
    assert (record["make"], record["model"], record["takenAt"]) == (
        "Canon",
        "EOS 40D",
        "2008-05-30T15:56:01",
    )
    assert record["gps"] == pytest.approx({"latitude": 48.858056, "longitude": 2.294444})
    assert record["metadata"] == metadata(*IMAGES["a.jpg"])
    assert record["pHash"] == f"{5_000:016x}"
    failed = image_record(catalogue, ids["gone.jpg"])
    assert (failed["status"], failed["reason"], failed["metadata"]) == ("failed", "http_404", None)
    with pytest.raises(ImageNotFoundError):
        image_record(catalogue, 999)


def test_the_summary_counts_the_catalogue(catalogue: Catalogue) -> None:
    stored(catalogue)
    counts = summary(catalogue)
    assert counts["total"] == 7
    assert counts["byStatus"] == [{"status": "ok", "count": 6}, {"status": "failed", "count": 1}]
    assert counts["byFormat"][0] == {"format": "jpg", "count": 4}
    assert counts["byCamera"] == {
        "cameras": [
            {"make": "Canon", "model": "EOS 40D", "count": 2},
            {"make": "Canon", "model": "PowerShot S40", "count": 1},
            {"make": "NIKON", "model": "D70", "count": 1},
        ],
        "others": 0,
    }
    assert counts["byYearTaken"] == [
        {"year": 2008, "count": 1},
        {"year": 2019, "count": 1},
        {"year": 2020, "count": 2},
    ]
    assert counts["failuresByReason"] == [{"status": "failed", "reason": "http_404", "count": 1}]
    by_size = {(bucket["from"], bucket["to"]): bucket["count"] for bucket in counts["bySize"]}
    assert by_size[(0, 10_000)] == 2  # 300 and 5,000 bytes
    assert by_size[(10_000, 30_000)] == 2
    assert by_size[(3_000_000, 10_000_000)] == 1
    assert by_size[(30_000_000, None)] == 0
    assert sum(by_size.values()) == 6


@pytest.fixture
async def api(db_url: str) -> AsyncIterator[tuple[URL, aiohttp.ClientSession, dict[str, int]]]:
    with open_catalogue(db_url) as opened:
        ids = stored(opened)
    async with (
        serving(create_app(api_settings(db_url), resolver=TEST_HOSTS)) as base,
        aiohttp.ClientSession() as client,
    ):
        yield base, client, ids


async def get(client: aiohttp.ClientSession, address: URL) -> tuple[int, Any]:
    async with client.get(address) as response:
        return response.status, await response.json()


async def test_the_endpoints_answer_the_page(
    api: tuple[URL, aiohttp.ClientSession, dict[str, int]],
) -> None:
    base, client, ids = api
    query = {"status": "ok", "make": "Canon", "gps": "true", "sort": "largest", "limit": "1"}
    status, first = await get(client, (base / "v1/images").with_query(query))
    assert status == 200
    assert [image["id"] for image in first["images"]] == [ids["d.jpg"]]
    status, second = await get(
        client, (base / "v1/images").with_query({**query, "after": first["next"]})
    )
    assert [image["id"] for image in second["images"]] == [ids["a.jpg"]]
    assert second["next"] is None
    status, record = await get(client, base / f"v1/images/{ids['a.jpg']}")
    assert (status, record["metadata"]["size"]) == (200, 5_000)
    status, counts = await get(client, base / "v1/summary")
    assert (status, counts["total"]) == (200, 7)
    async with client.get(base / "") as response:
        policy = response.headers["Content-Security-Policy"]
    assert "img-src 'self';" in policy and "http:" not in policy


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"sort": "biggest"}, "parameter sort: expected one of newest, largest, taken"),
        ({"status": "done"}, "parameter status: expected one of pending, ok, failed, skipped"),
        ({"limit": "0"}, "parameter limit: expected 1..500, got 0"),
        ({"taken_from": "2020-13-01"}, "parameter taken_from: expected a date as YYYY-MM-DD"),
        ({"gps": "maybe"}, "parameter gps: expected true or false"),
        ({"format": ""}, "parameter format is empty"),
        ({"url": "x" * 101}, "parameter url: at most 100 characters, got 101"),
        ({"sort": "largest", "after": "12"}, "after: '12' is not a page cursor of sort largest"),
    ],
)
async def test_bad_parameters_get_a_json_400(
    api: tuple[URL, aiohttp.ClientSession, dict[str, int]], query: dict[str, str], message: str
) -> None:
    base, client, _ = api
    status, body = await get(client, (base / "v1/images").with_query(query))
    assert status == 400
    assert body["message"].startswith(message), body


async def test_an_unknown_image_is_a_json_404(
    api: tuple[URL, aiohttp.ClientSession, dict[str, int]],
) -> None:
    base, client, _ = api
    for path in ("v1/images/999", "v1/images/abc", f"v1/images/{'9' * 19}"):
        status, body = await get(client, base / path)
        assert status == 404 and "no image with id" in body["message"], body
