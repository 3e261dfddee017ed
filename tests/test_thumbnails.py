"""Thumbnails: made during extraction from the pHash's pixels, stored beside each row on
SQLite and PostgreSQL, filled in by ``--refresh`` and by ``crawler thumbnails``, served with
ETag and long caching by ``GET /v1/files/{id}/thumbnail``."""

import asyncio
import dataclasses
import io
import json
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from PIL import Image

from crawler.batching import MOST_KEYS, BatchedReads
from crawler.catalogue import create_catalogue_engine, open_catalogue
from crawler.cli import cli
from crawler.config import ExtractSettings, Settings, load_settings
from crawler.engine import CrawlOptions, crawl, run_crawl
from crawler.errors import ConfigError
from crawler.extract import decode_cost, extract
from crawler.models import images, thumbnails
from crawler.serve import create_app
from tests.conftest import FIXTURES
from tests.faultserver import FaultServer
from tests.serve_support import TEST_HOSTS, UpstreamServer, api_settings, make_jpeg, serving

RED, BLUE = (230, 20, 20), (20, 20, 230)
FAST_CRAWL = {
    "crawl.concurrency": 4,
    "crawl.extract_workers": 1,
    "crawl.batch_size": 5,
    "crawl.timeouts.read": 2.0,
    "crawl.retries.attempts": 1,
}
REFRESH = CrawlOptions(refresh=True)


def shown_picture(size: tuple[int, int]) -> Image.Image:
    """Blue with a red top-left quarter, as the picture is meant to be seen."""
    picture = Image.new("RGB", size, BLUE)
    picture.paste(RED, (0, 0, size[0] // 2, size[1] // 2))
    return picture


def rotated(shown: Image.Image, image_format: str = "JPEG") -> bytes:
    """``shown`` stored turned a quarter anticlockwise, with EXIF orientation 6 (turn it a
    quarter clockwise to show it), as cameras held upright store portraits."""
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    shown.transpose(Image.Transpose.ROTATE_90).save(out, image_format, quality=90, exif=exif)
    return out.getvalue()


def png(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    """Local images: a portrait stored sideways (2000 x 1500, EXIF orientation 6), a wide
    PNG, a PNG smaller than a thumbnail, and a file that is no image."""
    contents = {
        "portrait.jpg": rotated(shown_picture((1500, 2000))),
        "wide.png": png(shown_picture((600, 300))),
        "small.png": png(shown_picture((100, 50))),
        "broken.jpg": b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 20,
    }
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in contents}


def settings(db_url: str, **overrides: object) -> Settings:
    return load_settings(None, {"database.url": db_url, **FAST_CRAWL, **overrides})


def stored_thumbnails(db_url: str) -> dict[str, tuple[int, int, bytes]]:
    """URL -> (width, height, WebP bytes) of every stored thumbnail."""
    engine = create_catalogue_engine(db_url)
    query = sa.select(images.c.url, thumbnails.c.width, thumbnails.c.height, thumbnails.c.webp)
    try:
        with engine.connect() as connection:
            rows = connection.execute(query.join_from(thumbnails, images)).all()
    finally:
        engine.dispose()
    return {row.url: (row.width, row.height, bytes(row.webp)) for row in rows}


def seeds_of(tmp_path: Path, paths: list[Path]) -> Path:
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("".join(f"{path}\n" for path in paths))
    return seeds


def decoded(webp: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(webp))
    assert picture.format == "WEBP"
    return picture.convert("RGB")


def test_a_crawl_stores_thumbnails_as_the_images_are_shown(
    db_url: str, photos: dict[str, Path], tmp_path: Path
) -> None:
    summary = run_crawl(seeds_of(tmp_path, list(photos.values())), settings(db_url))
    assert summary.by_status == {"ok": 3, "failed": 1}

    stored = stored_thumbnails(db_url)
    sizes = {Path(url).name: (width, height) for url, (width, height, _) in stored.items()}
    # The portrait is 1500 x 2000 as shown (a JPEG decoded at 1/8 for the pHash: 250 x 187).
    assert sizes == {"portrait.jpg": (144, 192), "wide.png": (192, 96), "small.png": (100, 50)}
    for url, (width, height, webp) in stored.items():
        picture = decoded(webp)
        assert picture.size == (width, height)
        assert _near(picture.getpixel((2, 2)), RED), url  # the red quarter is top left
        assert _near(picture.getpixel((width - 3, height - 3)), BLUE), url


@pytest.mark.parametrize("image_format", ["JPEG", "WEBP"])
def test_a_web_sized_jpeg_or_webp_gets_a_thumbnail_of_the_full_size(image_format: str) -> None:
    # stored 800 x 600: its pHash decodes 100 x 75 (JPEG at 1/8) or 43 x 32 (WebP scaled)
    data = rotated(shown_picture((600, 800)), image_format)
    made = extract(data, settings=ExtractSettings())
    assert made.thumbnail is not None and made.warnings == []
    assert (made.thumbnail.width, made.thumbnail.height) == (144, 192)
    picture = decoded(made.thumbnail.webp)
    assert picture.size == (144, 192)
    assert _near(picture.getpixel((2, 2)), RED)  # turned as shown: the red quarter top left
    assert _near(picture.getpixel((141, 189)), BLUE)
    assert made.metadata == extract(data, settings=ExtractSettings(thumbnail_size=0)).metadata

    small = extract(rotated(shown_picture((50, 100)), image_format)).thumbnail
    assert small is not None and (small.width, small.height) == (50, 100)  # never enlarged


def test_where_its_own_decode_needs_too_much_memory_the_thumbnail_is_the_phashs_size() -> None:
    data = rotated(shown_picture((600, 800)))
    # enough for the pHash's decode at 1/8 (100 x 75), not for the thumbnail's at 1/4
    enough_for_the_phash = decode_cost.estimate(data, "jpg", (800, 600), 3, 1) + 1000
    made = extract(data, settings=ExtractSettings(memory_limit=enough_for_the_phash))
    assert made.thumbnail is not None
    assert (made.thumbnail.width, made.thumbnail.height) == (75, 100)
    assert len(made.warnings) == 1
    assert made.warnings[0].startswith(
        "thumbnail: made from the pHash's fewer pixels: image needs too much memory to decode"
    )


def _near(pixel: object, colour: tuple[int, int, int]) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(a - b) <= 40 for a, b in zip(pixel, colour, strict=True))


def test_thumbnails_leave_the_metadata_object_as_it_is() -> None:
    on, off = ExtractSettings(), ExtractSettings(thumbnail_size=0)
    for path in sorted((FIXTURES / "images").iterdir()):
        if path.suffix == ".jsonl" or path.name == "bad-property-name.heic":
            continue
        data = path.read_bytes()
        with_thumbnail, without = extract(data, path.name, on), extract(data, path.name, off)
        assert with_thumbnail.metadata == without.metadata, path.name
        assert with_thumbnail.thumbnail is not None and without.thumbnail is None, path.name
        assert with_thumbnail.warnings == without.warnings, path.name


def test_thumbnail_size_0_stores_none(db_url: str, photos: dict[str, Path], tmp_path: Path) -> None:
    seeds = seeds_of(tmp_path, list(photos.values()))
    run_crawl(seeds, settings(db_url, **{"extract.thumbnail_size": 0}))
    assert stored_thumbnails(db_url) == {}


def test_a_refresh_fills_in_a_missing_thumbnail_and_replaces_one(
    db_url: str, photos: dict[str, Path], tmp_path: Path
) -> None:
    seeds = seeds_of(tmp_path, [photos["portrait.jpg"], photos["wide.png"]])
    run_crawl(seeds, settings(db_url, **{"extract.thumbnail_size": 0}))
    run_crawl(seeds, settings(db_url), options=REFRESH)
    assert {size[:2] for size in stored_thumbnails(db_url).values()} == {(144, 192), (192, 96)}

    run_crawl(seeds, settings(db_url, **{"extract.thumbnail_size": 64}), options=REFRESH)
    assert {size[:2] for size in stored_thumbnails(db_url).values()} == {(48, 64), (64, 32)}


def test_a_refresh_of_web_images_downloads_again_those_without_a_thumbnail(
    db_url: str, photos: dict[str, Path], tmp_path: Path
) -> None:
    files = {"wide.png": photos["wide.png"].read_bytes()}
    with FaultServer(files) as server:
        url = server.url("/img/wide.png")
        seeds = tmp_path / "seeds.txt"
        seeds.write_text(f"{url}\n")
        run_crawl(seeds, settings(db_url, **{"extract.thumbnail_size": 0}))
        # The server answers 304 to a conditional request: the refresh must not send one.
        filled = run_crawl(seeds, settings(db_url), options=REFRESH)
        assert filled.by_status == {"ok": 1} and "not_modified" not in filled.by_reason
        assert stored_thumbnails(db_url)[url][:2] == (192, 96)

        again = run_crawl(seeds, settings(db_url), options=REFRESH)
        assert again.by_reason == {"not_modified": 1}
        assert server.hits["/img/wide.png"] == 3
        server.image_status = 503  # a failed revalidation keeps the copy and its thumbnail
        run_crawl(seeds, settings(db_url), options=REFRESH)
    assert stored_thumbnails(db_url)[url][:2] == (192, 96)


def test_the_thumbnails_command_makes_the_missing_ones_from_local_files(
    db_url: str, photos: dict[str, Path], tmp_path: Path
) -> None:
    seeds = seeds_of(tmp_path, list(photos.values()))
    config = tmp_path / "off.toml"
    config.write_text("[extract]\nthumbnail_size = 0\n")
    assert run_crawl(seeds, settings(db_url, **{"extract.thumbnail_size": 0})).stored == 4
    photos["small.png"].write_bytes(png(shown_picture((100, 60))))  # changed since
    photos["wide.png"].unlink()  # gone

    made = CliRunner().invoke(cli, ["--db", db_url, "thumbnails", "--json"])
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout) == {"made": 1, "changed": 1, "unreadable": 1}
    assert {Path(url).name for url in stored_thumbnails(db_url)} == {"portrait.jpg"}

    again = CliRunner().invoke(cli, ["--db", db_url, "thumbnails", "--json"])
    assert json.loads(again.stdout) == {"made": 0, "changed": 1, "unreadable": 1}
    off = CliRunner().invoke(cli, ["--config", str(config), "--db", db_url, "thumbnails"])
    assert (off.exit_code, off.stderr) == (
        1,
        "Error: extract.thumbnail_size: is 0 (thumbnails off); nothing to make\n",
    )


def test_the_python_api_makes_and_reads_thumbnails(
    db_url: str, photos: dict[str, Path], tmp_path: Path
) -> None:
    import crawler

    seeds = seeds_of(tmp_path, [photos["portrait.jpg"]])
    run_crawl(seeds, settings(db_url, **{"extract.thumbnail_size": 0}))
    with crawler.open(db_url) as catalogue:
        assert catalogue.thumbnail(1) is None
        counts = catalogue.make_missing_thumbnails(settings=settings(db_url))
        assert dataclasses.asdict(counts) == {"made": 1, "changed": 0, "unreadable": 0}
        thumbnail = catalogue.thumbnail(1)
    assert thumbnail is not None and (thumbnail.width, thumbnail.height) == (144, 192)
    assert decoded(thumbnail.webp).size == (144, 192)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("-1", r"^extract\.thumbnail_size: must be 0 or more, got -1$"),
        ("4096", r"^extract\.thumbnail_size: at most 1024, got 4096$"),
        ("1.5", r"^extract\.thumbnail_size: expected an integer, got 1\.5$"),
    ],
)
def test_a_thumbnail_size_that_cannot_be_meant_is_refused(
    tmp_path: Path, value: str, error: str
) -> None:
    config = tmp_path / "crawler.toml"
    config.write_text(f"[extract]\nthumbnail_size = {value}\n")
    with pytest.raises(ConfigError, match=error):
        load_settings(config)


async def test_the_endpoint_serves_thumbnails_with_etag_and_long_caching(
    db_url: str, photos: dict[str, Path], tmp_path: Path
) -> None:
    seeds = seeds_of(tmp_path, list(photos.values()))
    await crawl(seeds, settings(db_url))
    with open_catalogue(db_url) as catalogue, catalogue.engine.connect() as connection:
        ids = {Path(row.url).name: row.id for row in connection.execute(sa.select(images))}
    stored = {Path(url).name: webp for url, (_, _, webp) in stored_thumbnails(db_url).items()}

    app = create_app(api_settings(db_url), resolver=TEST_HOSTS)
    async with serving(app) as url, aiohttp.ClientSession() as client:

        async def get(image_id: object, **headers: str) -> tuple[aiohttp.ClientResponse, bytes]:
            path = f"/v1/files/{image_id}/thumbnail"
            async with client.get(url.with_path(path), headers=headers) as response:
                return response, await response.read()

        answer, body = await get(ids["portrait.jpg"])
        assert (answer.status, answer.content_type) == (200, "image/webp")
        assert body == stored["portrait.jpg"]
        etag = answer.headers["ETag"]
        assert etag.startswith('"') and etag.endswith('"') and len(etag) > 10
        assert answer.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        other, _ = await get(ids["wide.png"])
        assert other.headers["ETag"] != etag

        for held in (etag, f'"other", {etag}', f"W/{etag}", "*"):
            cached, empty = await get(ids["portrait.jpg"], **{"If-None-Match": held})
            assert (cached.status, empty, cached.headers["ETag"]) == (304, b"", etag), held
        stale, body = await get(ids["portrait.jpg"], **{"If-None-Match": '"other"'})
        assert (stale.status, body) == (200, stored["portrait.jpg"])

        for missing in (ids["broken.jpg"], 999, "x1"):
            answer, body = await get(missing)
            assert answer.status == 404, missing
            assert answer.content_type == "application/json"
            assert set(json.loads(body)) == {"message", "help"}

        # A page's tiles at once: each gets its own image (they are read together).
        names = [name for name in ids if name in stored] * 10
        answers = await asyncio.gather(*(get(ids[name]) for name in names))
        assert [body for _, body in answers] == [stored[name] for name in names]


async def test_batched_reads_read_together_what_is_asked_meanwhile() -> None:
    reads: list[list[int]] = []

    async def read(keys: list[int]) -> dict[int, str]:
        reads.append(keys)
        await asyncio.sleep(0.01)
        if 13 in keys:
            raise ValueError("unlucky")
        return {key: f"value {key}" for key in keys if key % 2 == 0}

    batched: BatchedReads[int, str] = BatchedReads(read)
    found = await asyncio.gather(*(batched.get(key) for key in [2, 3, 4, 2]))
    assert found == ["value 2", None, "value 4", "value 2"]
    assert reads == [[2, 3, 4]]
    first = asyncio.ensure_future(batched.get(6))
    await asyncio.sleep(0)  # its read has begun: the next ones wait for another
    later = asyncio.gather(*(batched.get(key) for key in (8, 13)), return_exceptions=True)
    assert await first == "value 6"
    assert [str(result) for result in await later] == ["unlucky", "unlucky"]
    assert reads[1:] == [[6], [8, 13]]
    many = await asyncio.gather(*(batched.get(key) for key in range(1000, 2200, 2)))
    assert many == [f"value {key}" for key in range(1000, 2200, 2)]
    assert [len(keys) for keys in reads[3:]] == [MOST_KEYS, 600 - MOST_KEYS]


async def test_an_image_stored_through_the_api_has_its_thumbnail(db_url: str) -> None:
    upstream = UpstreamServer({"a.jpg": make_jpeg(1, size=(640, 480))})
    async with serving(upstream.app) as base:
        allowed = api_settings(db_url, allow_hosts=(f"127.0.0.1:{base.port}",))
        await asyncio.to_thread(lambda: open_catalogue(db_url).close())
        app = create_app(allowed, resolver=TEST_HOSTS)
        async with serving(app) as url, aiohttp.ClientSession() as client:
            query = {"url": str(base / "img" / "a.jpg"), "store": "true"}
            async with client.get(url.with_path("/v1/metadata").with_query(query)) as answer:
                assert answer.status == 200
            async with client.get(url.with_path("/v1/files/1/thumbnail")) as answer:
                assert (answer.status, answer.content_type) == (200, "image/webp")
                assert decoded(await answer.read()).size == (192, 144)  # from 640 x 480
