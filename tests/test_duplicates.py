"""The copy to keep of each duplicate group (most pixels, then largest file, then first seen)
and ``crawler duplicates --redundant``, on SQLite and PostgreSQL."""

import csv
import io
import json
import random
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from click.testing import CliRunner

import crawler
from crawler.catalogue import Catalogue, open_catalogue
from crawler.cli import cli
from crawler.duplicates import DuplicateGroup, duplicates, redundant_images
from crawler.hashes import distance, to_hex
from crawler.store import CrawlResult, store_results

BASE = 0x63433B3CCF8E1EBE
OTHER = 0x1F00FF00AA5533CC  # 30 bits from BASE


def near(value: int, bits: int, seed: int) -> int:
    for bit in random.Random(seed).sample(range(64), bits):
        value ^= 1 << bit
    return value


def image(
    name: str,
    phash: int,
    width: int | None,
    height: int | None,
    size: int | None,
    *,
    sha256: str | None = None,
    taken: str | None = None,
) -> CrawlResult:
    metadata: dict[str, Any] = {"width": width, "height": height, "size": size, "format": "jpg"}
    metadata["pHash"] = to_hex(phash)
    if taken is not None:
        metadata["exif"] = {"exif": {"DateTimeOriginal": taken}}
    return CrawlResult(
        f"https://a.test/{name}",
        "ok",
        sha256=sha256 or name.ljust(64, "0"),
        metadata=metadata,
        hash_algorithm="imagekit",
    )


@pytest.fixture
def catalogue(db_url: str) -> Iterator[Catalogue]:
    with open_catalogue(db_url) as opened:
        yield opened


def names(group: DuplicateGroup) -> list[str]:
    return [member.url.rsplit("/", 1)[1] for member in group.members]


def test_the_copy_to_keep_has_most_pixels_then_largest_file_then_lowest_id(
    catalogue: Catalogue,
) -> None:
    store_results(
        catalogue,
        [
            image("small", BASE, 100, 100, 500),  # id 1
            image("wide", near(BASE, 2, 1), 200, 50, 800),  # 10,000 pixels, like "square"
            image("square", near(BASE, 3, 2), 100, 100, 800),  # the same size too: later id
            image("heavy", near(BASE, 4, 3), 50, 50, 9000),  # the largest file, fewer pixels
            image("unknown", near(BASE, 1, 4), None, None, None),
            image("plain", OTHER, 300, 300, 90_000),  # id 6
            image("large", near(OTHER, 5, 5), 400, 300, 1000),  # more pixels, smaller file
        ],
    )
    first, second = duplicates(catalogue)
    assert (first.kind, names(first)) == (
        "similar",
        ["wide", "small", "square", "heavy", "unknown"],
    )
    assert first.keep == first.members[0].id == 2
    assert [member.keep for member in first.members] == [True, False, False, False, False]
    kept_hash = first.members[0].pHash
    assert [m.distance for m in first.members] == [
        distance(kept_hash, m.pHash) for m in first.members
    ]
    unknown = first.members[-1]
    assert (unknown.width, unknown.height, unknown.size) == (None, None, None)
    assert (names(second), second.keep) == (["large", "plain"], 7)


def test_exact_copies_keep_the_first_seen_and_members_carry_their_details(
    catalogue: Catalogue,
) -> None:
    shared = "c" * 64
    store_results(
        catalogue,
        [
            image("copy-1", BASE, 640, 480, 5000, sha256=shared, taken="2024:05:01 10:20:30"),
            image("copy-2", BASE, 640, 480, 5000, sha256=shared, taken="2024:05:01 10:20:30"),
        ],
    )
    [group] = duplicates(catalogue)
    assert (group.kind, names(group), group.keep) == ("exact", ["copy-1", "copy-2"], 1)
    kept = group.members[0]
    assert (kept.width, kept.height, kept.size, kept.format, kept.keep) == (
        640,
        480,
        5000,
        "jpg",
        True,
    )
    assert kept.taken_at == datetime(2024, 5, 1, 10, 20, 30)
    assert [member.distance for member in group.members] == [0, 0]


@pytest.fixture
def redundant_catalogue(catalogue: Catalogue) -> Catalogue:
    """Two byte-identical copies whose pHash is near a larger image, and a pair of copies
    alone."""
    store_results(
        catalogue,
        [
            image("photo", BASE, 800, 600, 70_000, sha256="a" * 64),  # id 1
            image("photo-again", BASE, 800, 600, 70_000, sha256="a" * 64),
            image("photo-large", near(BASE, 6, 7), 1600, 1200, 250_000),  # id 3: the keeper
            image("logo", OTHER, 64, 64, 900, sha256="b" * 64),  # id 4
            image("logo-again", OTHER, 64, 64, 900, sha256="b" * 64),
            image("alone", near(OTHER, 20, 8), 64, 64, 900),
        ],
    )
    return catalogue


REDUNDANT = [  # id, url, keep_id, kind, distance: every image but the ones to keep
    (1, "https://a.test/photo", 3, "similar", 6),
    (2, "https://a.test/photo-again", 3, "similar", 6),
    (5, "https://a.test/logo-again", 4, "exact", 0),
]


def test_redundant_images_are_all_but_the_copy_to_keep(redundant_catalogue: Catalogue) -> None:
    found = redundant_images(redundant_catalogue)
    assert [(r.id, r.url, r.keep_id, r.kind, r.distance) for r in found] == REDUNDANT
    assert [r.keep_url for r in found] == [
        "https://a.test/photo-large",
        "https://a.test/photo-large",
        "https://a.test/logo",
    ]
    photo = found[0]
    assert (photo.width, photo.height, photo.size, photo.format) == (800, 600, 70_000, "jpg")
    assert [r.sha256 for r in found] == ["a" * 64, "a" * 64, "b" * 64]


def test_the_python_api_lists_them_too(db_url: str, redundant_catalogue: Catalogue) -> None:
    with crawler.open(db_url) as catalogue:
        assert catalogue.redundant_images() == redundant_images(redundant_catalogue)
        assert [group.keep for group in catalogue.duplicates()] == [1, 4, 3]


def test_a_smaller_radius_leaves_only_the_exact_copies(redundant_catalogue: Catalogue) -> None:
    found = redundant_images(redundant_catalogue, 5)  # photo-large is 6 bits away
    assert [(r.id, r.keep_id, r.kind) for r in found] == [(2, 1, "exact"), (5, 4, "exact")]


def run_redundant(db_url: str, fmt: str) -> str:
    result = CliRunner().invoke(cli, ["--db", db_url, "duplicates", "--redundant", f"--{fmt}"])
    assert (result.exit_code, result.stderr) == (0, "")
    return result.stdout


def test_redundant_in_csv(db_url: str, redundant_catalogue: Catalogue) -> None:
    rows = list(csv.DictReader(io.StringIO(run_redundant(db_url, "csv"))))
    assert list(rows[0]) == [
        *("id", "url", "keep_id", "keep_url", "kind", "distance"),
        *("width", "height", "size", "format", "sha256"),
    ]
    assert [
        (int(row["id"]), row["url"], int(row["keep_id"]), row["kind"], int(row["distance"]))
        for row in rows
    ] == REDUNDANT
    assert (rows[0]["width"], rows[0]["height"], rows[0]["size"]) == ("800", "600", "70000")


def test_redundant_in_json(db_url: str, redundant_catalogue: Catalogue) -> None:
    rows = json.loads(run_redundant(db_url, "json"))
    assert [(r["id"], r["url"], r["keep_id"], r["kind"], r["distance"]) for r in rows] == REDUNDANT
    assert rows[2] == {
        "id": 5,
        "url": "https://a.test/logo-again",
        "keep_id": 4,
        "keep_url": "https://a.test/logo",
        "kind": "exact",
        "distance": 0,
        "width": 64,
        "height": 64,
        "size": 900,
        "format": "jpg",
        "sha256": "b" * 64,
    }
