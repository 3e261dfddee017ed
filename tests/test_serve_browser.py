"""The catalogue browser at ``/`` in headless Chromium (through chromedriver), on a catalogue
crawled from local files and on one crawled over HTTP from a loopback server: every tile's
thumbnail loads, filters narrow the grid to the right images, the detail view lists the
right near duplicates, the duplicate groups mark the copy to keep, the charts render, and
the browser asks no host but the server. Each view leaves a screenshot in tests/artifacts/."""

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image
from yarl import URL

import crawler
from crawler import browse
from crawler.config import Settings
from crawler.models import images
from crawler.serve import create_app
from tests.serve_support import (
    TEST_HOSTS,
    UpstreamServer,
    api_settings,
    make_jpeg,
    serving_in_thread,
)
from tests.webdriver import Browser, chromium_session

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def photo(
    seed: int,
    *,
    touch: float = 0,
    camera: str = "",
    taken: str = "",
    gps: bool = False,
    kind: str = "JPEG",
) -> bytes:
    """A generated photo with the EXIF a camera writes: make and model, date taken, and a
    position (48°51'29" N, 2°17'40" W) when ``gps``."""
    exif = Image.Exif()
    if camera:
        exif[0x010F], exif[0x0110] = camera.split("/")
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    if gps:
        exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 29.0), 3: "W", 4: (2.0, 17.0, 40.0)})
    image = Image.open(io.BytesIO(make_jpeg(seed, touch=touch, size=(240, 160))))
    out = io.BytesIO()
    image.save(out, kind, exif=exif)
    return out.getvalue()


FILES = {
    "sunset.jpg": photo(7, camera="TestCam/Model 1", taken="2021:06:01 19:30:00", gps=True),
    "sunset-edited.jpg": photo(7, touch=40, camera="TestCam/Model 1", taken="2021:06:02 08:00:00"),
    "forest.jpg": photo(8, camera="OtherCam/Model 2", taken="2019:03:03 12:00:00"),
    "forest-copy.jpg": photo(8, camera="OtherCam/Model 2", taken="2019:03:03 12:00:00"),
    "loner.png": photo(9, kind="PNG"),
    "broken.jpg": b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 20,
}
GOOD = sorted(set(FILES) - {"broken.jpg"})


@dataclass
class Page:
    url: URL
    ids: dict[str, int]  # file name -> image id
    catalogue: str


@pytest.fixture(params=["files", "http"])
def page(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Page]:
    database = f"sqlite:///{tmp_path / 'catalogue.db'}"
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, data in FILES.items():
        (folder / name).write_bytes(data)
    with serving_in_thread(UpstreamServer(FILES).app) as image_host:
        if request.param == "files":
            seeds = [str(folder)]
        else:
            seeds = [str(image_host / "img" / name) for name in FILES]
        crawler.crawl_sync(seeds, database, settings=Settings())
    with crawler.open(database) as catalogue, catalogue.engine.connect() as connection:
        rows = connection.execute(sa.select(images.c.id, images.c.url)).all()
    ids = {url.rsplit("/", 1)[-1]: image_id for image_id, url in rows}
    with serving_in_thread(create_app(api_settings(database), resolver=TEST_HOSTS)) as url:
        yield Page(url, ids, database)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    with chromium_session(tmp_path / "profile") as session:
        yield session


def show(browser: Browser, page: Page, fragment: str, view: str) -> None:
    """Open a view and wait until it is drawn and its images have loaded or failed."""
    browser.open(f"{page.url}/#{fragment}")
    browser.wait_for(f"return document.body.dataset.ready === {view!r}")
    browser.wait_for("return [...document.images].every((img) => img.complete)")


def tiles(browser: Browser, within: str = "#grid") -> list[int]:
    return browser.run(
        "return [...document.querySelectorAll(arguments[0] + ' .tile')]"
        ".map((tile) => Number(tile.dataset.id))",
        within,
    )


def screenshot(browser: Browser, request: pytest.FixtureRequest, view: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"page-{request.node.callspec.id}-{view}.png"
    path.unlink(missing_ok=True)
    browser.screenshot(path)
    assert path.stat().st_size > 10_000


def only_this_server(browser: Browser, page: Page) -> None:
    requested = browser.run(
        "return performance.getEntriesByType('resource').map((entry) => entry.name)"
    )
    assert requested and all(URL(name).origin() == page.url.origin() for name in requested)


def test_the_grid_shows_every_image_with_its_thumbnail(
    page: Page, browser: Browser, request: pytest.FixtureRequest
) -> None:
    show(browser, page, "/images", "images")
    # Newest first; the broken file is not an image to show (the status filter starts at ok).
    assert tiles(browser) == sorted((page.ids[name] for name in GOOD), reverse=True)
    widths = browser.run(
        "return [...document.querySelectorAll('#grid img')].map(i => i.naturalWidth)"
    )
    assert len(widths) == len(GOOD) and all(width > 0 for width in widths), widths
    # Each thumbnail's URL names its file's digest, so that the year-long cache never shows
    # the thumbnail of a file since replaced.
    sources = browser.run("return [...document.querySelectorAll('#grid img')].map(i => i.src)")
    digests = {hashlib.sha256(FILES[name]).hexdigest()[:16] for name in GOOD}
    assert {URL(source).query["v"] for source in sources} == digests
    only_this_server(browser, page)
    screenshot(browser, request, "grid")


def test_filters_narrow_the_grid_to_the_matching_images(
    page: Page, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    show(browser, page, "/images", "images")
    # The form: one camera, with a position.
    browser.wait_for("return document.getElementById('filters').dataset.choices === 'loaded'")
    browser.run(
        "const form = document.getElementById('filters');"
        "const camera = [...form.camera.options].find((o) => o.text.startsWith('TestCam'));"
        "form.camera.value = camera.value; form.gps.value = 'true'; form.requestSubmit();"
    )
    browser.wait_for("return location.hash.includes('gps=true') && document.body.dataset.ready")
    browser.wait_for("return document.body.dataset.ready === 'images'")
    assert tiles(browser) == [page.ids["sunset.jpg"]]
    # Links: a format; a date range with the largest file first; URL text; a failure.
    show(browser, page, "/images?format=png", "images")
    assert tiles(browser) == [page.ids["loner.png"]]
    show(browser, page, "/images?taken_from=2019-01-01&taken_to=2019-12-31&sort=taken", "images")
    assert sorted(tiles(browser)) == sorted([page.ids["forest.jpg"], page.ids["forest-copy.jpg"]])
    # The server checks the URL text on two rows a request: the page asks on until it finds.
    monkeypatch.setattr(browse, "SCAN_ROWS", 2)
    show(browser, page, "/images?url=FOREST-C&status=", "images")
    assert tiles(browser) == [page.ids["forest-copy.jpg"]]
    show(browser, page, "/images?status=failed", "images")
    assert tiles(browser) == [page.ids["broken.jpg"]]
    assert browser.run("return document.querySelector('#grid .missing').textContent")


def test_the_detail_view_lays_out_the_image_and_its_near_duplicates(
    page: Page, browser: Browser, request: pytest.FixtureRequest
) -> None:
    sunset = page.ids["sunset.jpg"]
    show(browser, page, f"/image/{sunset}", "image")
    assert tiles(browser, "#near") == [page.ids["sunset-edited.jpg"]]
    distance = browser.run("return document.querySelector('#near figcaption').textContent")
    assert distance.startswith("distance ") and 0 < int(distance.split()[1]) <= 10
    assert browser.run("return document.querySelector('#gps .coordinates').textContent") == (
        "48.858056° N, 2.294444° W"
    )
    fields = browser.run(
        "return Object.fromEntries([...document.querySelectorAll('#metadata table.fields tr')]"
        ".map((row) => [row.cells[0].textContent, row.cells[1].textContent]))"
    )
    assert (fields["width"], fields["height"], fields["format"]) == ("240", "160", "jpg")
    sections = browser.run(
        "return [...document.querySelectorAll('#metadata h3')].map((h) => h.textContent)"
    )
    assert sections == ["exif.image", "exif.exif", "exif.gps"]
    assert browser.run("return document.querySelector('.picture img').naturalWidth") > 0
    screenshot(browser, request, "detail")


def test_the_duplicate_groups_mark_the_copy_to_keep(
    page: Page, browser: Browser, request: pytest.FixtureRequest
) -> None:
    show(browser, page, "/duplicates", "duplicates")
    groups = browser.run(
        "return [...document.querySelectorAll('section.group')].map((group) => ({"
        "kind: group.classList[1],"
        "ids: [...group.querySelectorAll('.tile')].map((t) => Number(t.dataset.id)),"
        "keep: [...group.querySelectorAll('.tile.keep')].map((t) => Number(t.dataset.id)),"
        "captions: [...group.querySelectorAll('figcaption')].map((c) => c.textContent)}))"
    )
    forests = sorted([page.ids["forest.jpg"], page.ids["forest-copy.jpg"]])
    sunsets = {page.ids["sunset.jpg"], page.ids["sunset-edited.jpg"]}
    assert [(group["kind"], sorted(group["ids"])) for group in groups] == [
        ("exact", forests),
        ("similar", sorted(sunsets)),
    ]
    dimensions = "240 \u00d7 160"
    assert all(dimensions in caption for group in groups for caption in group["captions"])
    # Same pixels: the larger file is kept, and between identical files the first seen.
    sizes = {name: len(FILES[name]) for name in ("sunset.jpg", "sunset-edited.jpg")}
    larger = max(sizes, key=lambda name: (sizes[name], -page.ids[name]))
    assert [group["keep"] for group in groups] == [[forests[0]], [page.ids[larger]]]
    assert "most pixels" in browser.run("return document.querySelector('.rule').textContent")
    screenshot(browser, request, "duplicates")


def test_the_summary_charts_the_catalogue(
    page: Page, browser: Browser, request: pytest.FixtureRequest
) -> None:
    show(browser, page, "/summary", "summary")
    charts = browser.run(
        "return Object.fromEntries([...document.querySelectorAll('section.chart')].map((c) => "
        "[c.id, [...c.querySelectorAll('svg rect')].map((bar) => "
        "[bar.previousSibling.textContent, "
        "Number(bar.nextSibling.textContent), Number(bar.getAttribute('width'))])]))"
    )
    labels = {chart: [(label, count) for label, count, _ in bars] for chart, bars in charts.items()}
    assert labels["by-format"] == [("jpg", 4), ("png", 1)]
    assert labels["by-camera"] == [("OtherCam Model 2", 2), ("TestCam Model 1", 2)]
    assert labels["by-year"] == [("2019", 2), ("2021", 2)]
    assert labels["by-status"] == [("ok", 5), ("failed", 1)]
    assert [count for _, count in labels["failures"]] == [1]
    assert sum(count for _, count in labels["by-size"]) == 5
    assert all(width > 0 for bars in charts.values() for _, count, width in bars if count)
    screenshot(browser, request, "summary")
