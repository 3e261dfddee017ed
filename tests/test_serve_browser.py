"""The near-duplicates page in headless Chromium: it renders the groups of a small seeded
catalogue, with thumbnails loaded from the images' own URLs, and leaves a screenshot in
tests/artifacts/."""

import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from yarl import URL

from crawler.catalogue import open_catalogue
from crawler.extract import extract
from crawler.serve import create_app
from crawler.store import CrawlResult, store_results
from tests.conftest import IN_CI
from tests.serve_support import (
    TEST_HOSTS,
    UpstreamServer,
    api_settings,
    make_jpeg,
    serving_in_thread,
)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
IMAGES = {
    "sunset.jpg": make_jpeg(7, size=(240, 160)),
    "sunset-edited.jpg": make_jpeg(7, touch=40, size=(240, 160)),
    "forest.jpg": make_jpeg(8, size=(240, 160)),
    "loner.jpg": make_jpeg(9, size=(240, 160)),
}
# Catalogue URL (on the image server) -> file. The same bytes under two URLs make an exact
# group; the sunset pair a similar group; the loner no group.
CATALOGUE = {
    "img/sunset.jpg": "sunset.jpg",
    "img/sunset-edited.jpg": "sunset-edited.jpg",
    "img/forest.jpg": "forest.jpg",
    "img/forest.jpg?copy=2": "forest.jpg",
    "img/loner.jpg": "loner.jpg",
}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,900",
    "--virtual-time-budget=10000",  # lets the page's fetch and the thumbnails finish
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    message = "headless Chromium is not installed (Debian: apt-get install chromium)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def image_host() -> Iterator[tuple[UpstreamServer, URL]]:
    server = UpstreamServer(IMAGES)
    with serving_in_thread(server.app) as url:
        yield server, url


@pytest.fixture
def page_url(tmp_path: Path, image_host: tuple[UpstreamServer, URL]) -> Iterator[URL]:
    _, base = image_host
    database_url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    with open_catalogue(database_url) as catalogue:
        rows = [_stored(f"{base}/{path}", IMAGES[file]) for path, file in CATALOGUE.items()]
        store_results(catalogue, rows)
    with serving_in_thread(create_app(api_settings(database_url), resolver=TEST_HOSTS)) as url:
        yield url


def _stored(url: str, data: bytes) -> CrawlResult:
    extraction = extract(data)
    return CrawlResult(
        url=url,
        status="ok",
        sha256=hashlib.sha256(data).hexdigest(),
        fetched_at=datetime.now(UTC),
        metadata=extraction.metadata,
        hash_algorithm=extraction.hash_algorithm,
    )


def run_chromium(tmp_path: Path, *arguments: str) -> str:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    completed = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return completed.stdout


def test_page_shows_the_groups_with_thumbnails_from_the_images_urls(
    tmp_path: Path, page_url: URL, image_host: tuple[UpstreamServer, URL]
) -> None:
    server, _ = image_host
    dom = run_chromium(tmp_path, "--dump-dom", str(page_url / ""))
    groups = re.findall(r'<section class="group (exact|similar)">(.*?)</section>', dom, re.S)
    assert [kind for kind, _ in groups] == ["exact", "similar"], dom
    exact, similar = (body for _, body in groups)
    assert re.findall(r'<img src="[^"]*/img/([^"?]+)', exact) == ["forest.jpg", "forest.jpg"]
    assert sorted(re.findall(r'<img src="[^"]*/img/([^"?]+)', similar)) == [
        "sunset-edited.jpg",
        "sunset.jpg",
    ]
    assert re.search(r'class="distance">same bytes</span>', exact)
    distance = re.search(r'class="distance">distance (\d+)</span>', similar)
    assert distance is not None and 0 < int(distance.group(1)) <= 10
    assert "loner.jpg" not in dom
    assert "2 groups within 10 bits" in dom
    # The browser loaded the thumbnails from the images' own server.
    assert server.requests["/img/forest.jpg"] >= 1
    assert server.requests["/img/sunset.jpg"] >= 1

    first_only = requests.get(f"{page_url}/v1/duplicates", {"limit": 1}, timeout=10).json()
    assert (first_only["total_groups"], len(first_only["groups"])) == (2, 1)

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "serve-duplicates.png"
    screenshot.unlink(missing_ok=True)
    run_chromium(tmp_path, f"--screenshot={screenshot}", str(page_url / ""))
    assert screenshot.stat().st_size > 10_000
