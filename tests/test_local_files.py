"""Local files that are not regular files: a named pipe, a Unix socket and a device (made by
the test, real ones) fail ``not_a_file`` at once wherever a local file is read, and directory
walks skip them; nothing waits on them, in a crawl or in ``crawler extract``."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from crawler.catalogue import create_catalogue_engine
from crawler.downloader import Downloads
from crawler.errors import CrawlerError
from crawler.files import FileReadError, read_image_file
from crawler.models import images
from crawler.seeds import image_files
from tests.test_crawl import FAST_SETTINGS
from tests.test_fetch import FAST

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "images"
CANON = SAMPLES / "Canon_40D.jpg"
CRAWLER = Path(sys.executable).parent / "crawler"
DEVICE = Path("/dev/zero")  # endless: reading it whole would never end


@pytest.fixture
def specials(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A named pipe and a listening Unix socket, both named like images, and a device."""
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    sock = tmp_path / "socket.jpg"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock))
    listener.listen()
    try:
        yield {"a named pipe": pipe, "a socket": sock, "a character device": DEVICE}
    finally:
        listener.close()


def test_reading_a_special_file_fails_not_a_file_at_once(specials: dict[str, Path]) -> None:
    for kind, path in specials.items():
        started = time.monotonic()
        with pytest.raises(FileReadError) as caught:
            read_image_file(path.as_uri(), path, 1024)
        assert time.monotonic() - started < 1
        assert caught.value.reason == "not_a_file"
        assert str(caught.value) == f"{path.as_uri()}: not a regular file but {kind}"


def test_a_directory_read_as_a_file_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(FileReadError, match="not a regular file but a directory") as caught:
        read_image_file(tmp_path.as_uri(), tmp_path, 1024)
    assert caught.value.reason == "not_a_file"


async def test_the_crawls_fetcher_refuses_special_files(specials: dict[str, Path]) -> None:
    async with Downloads(FAST, workers=2) as downloads:
        for path in specials.values():
            with pytest.raises(CrawlerError) as caught:
                await asyncio.wait_for(downloads.fetch(path.as_uri()), 5)
            assert caught.value.reason == "not_a_file"
        assert (await downloads.fetch(CANON.as_uri())).data == CANON.read_bytes()


def test_directory_walks_skip_special_files_but_keep_dangling_links(
    tmp_path: Path, specials: dict[str, Path]
) -> None:
    (tmp_path / "sub").mkdir()
    good = tmp_path / "sub" / "good.jpg"
    good.write_bytes(CANON.read_bytes())
    dangling = tmp_path / "dangling.jpg"
    dangling.symlink_to(tmp_path / "gone.jpg")
    linked = tmp_path / "linked.jpg"
    linked.symlink_to(good)
    (tmp_path / "to-pipe.jpg").symlink_to(specials["a named pipe"])
    assert list(image_files(tmp_path)) == [dangling, linked, good]


def crawl_rows(db_url: str) -> dict[str, tuple[str, str | None]]:
    engine = create_catalogue_engine(db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.select(images.c.url, images.c.status, images.c.reason))
            return {row.url: (row.status, row.reason) for row in rows}
    finally:
        engine.dispose()


def test_a_crawl_of_special_files_stores_failed_rows_and_ends(
    db_url: str, tmp_path: Path, specials: dict[str, Path]
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    os.mkfifo(tree / "a.jpg")
    inner = socket.socket(socket.AF_UNIX)
    inner.bind(str(tree / "b.jpg"))
    (tree / "c.jpg").write_bytes(CANON.read_bytes())
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("".join(f"{path}\n" for path in [*specials.values(), tree]))
    config = tmp_path / "crawler.toml"
    config.write_text(FAST_SETTINGS)
    command = [str(CRAWLER), "--config", str(config), "--db", db_url, "run", str(seeds)]
    try:
        finished = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=60)
    finally:
        inner.close()
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["by_reason"] == {"not_a_file": 3}
    assert crawl_rows(db_url) == {
        **{path.as_uri(): ("failed", "not_a_file") for path in specials.values()},
        (tree / "c.jpg").as_uri(): ("ok", None),
    }


@pytest.mark.parametrize("many", [False, True], ids=["in-process", "extraction-processes"])
def test_extract_reports_special_files_and_goes_on(
    tmp_path: Path, specials: dict[str, Path], many: bool
) -> None:
    sources = [str(path) for path in specials.values()]
    if many:  # a directory: read and extracted by the extraction processes
        tree = tmp_path / "tree"
        tree.mkdir()
        os.mkfifo(tree / "a.jpg")
        (tree / "c.jpg").write_bytes(CANON.read_bytes())
        sources.append(str(tree))
    finished = subprocess.run(
        [str(CRAWLER), "extract", *sources], capture_output=True, text=True, timeout=60
    )
    assert finished.returncode == 1
    errors = finished.stderr.splitlines()
    assert errors == [
        f"Error: {path.as_uri()}: not a regular file but {kind}" for kind, path in specials.items()
    ]
    if many:
        [row] = [json.loads(line) for line in finished.stdout.splitlines()]
        assert row["source"] == str(tmp_path / "tree" / "c.jpg")
