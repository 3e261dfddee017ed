"""Reads from the catalogue: near-duplicate search against brute force, duplicate groups,
show, stats and export, on SQLite and PostgreSQL, and the CLI commands over them."""

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from crawler.catalogue import Catalogue, head_revision, open_catalogue
from crawler.cli.common import cli
from crawler.duplicates import close_pairs, duplicates
from crawler.errors import HashFormatError
from crawler.hashes import distance, to_hex
from crawler.query import (
    STRATEGIES,
    ImageNotFoundError,
    QueryError,
    export,
    show,
    similar,
    stats,
)
from crawler.store import CrawlResult, store_results

ALL_ZERO = 0
ALL_ONE = (1 << 64) - 1
TOP_BIT = 1 << 63


def flip_bits(value: int, count: int, chooser: random.Random) -> int:
    for bit in chooser.sample(range(64), count):
        value ^= 1 << bit
    return value


def hashed(url: str, value: int, sha256: str | None = None) -> CrawlResult:
    return CrawlResult(
        url, "ok", sha256=sha256, metadata={"pHash": to_hex(value)}, hash_algorithm="imagekit"
    )


@pytest.fixture
def catalogue(db_url: str) -> Iterator[Catalogue]:
    with open_catalogue(db_url) as opened:
        yield opened


@pytest.fixture
def planted(catalogue: Catalogue) -> tuple[Catalogue, list[int], list[int]]:
    """Random hashes, plus neighbours of each query hash at every distance 0..24; the query
    hashes include the all-zero and all-one hashes and hashes with the top bit set."""
    chooser = random.Random(20261126)
    queries = [ALL_ZERO, ALL_ONE, TOP_BIT | chooser.getrandbits(63), chooser.getrandbits(63)]
    stored = [chooser.getrandbits(64) for _ in range(1500)]
    for query in queries:
        stored += [flip_bits(query, d, chooser) for d in range(25) for _ in range(2)]
    stored.append(None)  # a failed row has no hash and must never match
    results = [
        hashed(f"https://example.com/{i}", value)
        if value is not None
        else CrawlResult(f"https://example.com/{i}", "failed", reason="http_404")
        for i, value in enumerate(stored)
    ]
    store_results(catalogue, results)
    return catalogue, queries, stored


def brute_force(stored: list[int | None], query: int, radius: int) -> list[tuple[int, int]]:
    found = [
        (distance(value, query), index + 1)  # ids follow insertion order from 1
        for index, value in enumerate(stored)
        if value is not None and distance(value, query) <= radius
    ]
    return sorted(found)


def test_similar_equals_brute_force(planted) -> None:
    catalogue, queries, stored = planted
    for query in queries:
        for radius in (0, 1, 3, 4, 7, 10, 13, 18):
            expected = brute_force(stored, query, radius)
            assert {d for d, _ in expected} >= set(range(radius + 1))  # planted at every distance
            for strategy in STRATEGIES:
                found = similar(catalogue, to_hex(query), radius, strategy=strategy)
                found_keys = [(row.distance, row.id) for row in found]
                assert found_keys == expected, (to_hex(query), radius, strategy)


def test_similar_rows_carry_url_hex_and_similarity(planted) -> None:
    catalogue, queries, stored = planted
    query = queries[2]  # top bit set: a negative BIGINT
    rows = similar(catalogue, query - (1 << 64), 5, limit=3)  # signed form of the same hash
    assert len(rows) == 3
    for row in rows:
        assert row.url == f"https://example.com/{row.id - 1}"
        assert row.pHash == to_hex(stored[row.id - 1])
        assert row.similarity == 1 - row.distance / 64
    assert [row.distance for row in rows] == sorted(row.distance for row in rows)


def test_large_radius_falls_back_to_the_scan_with_the_same_rows(planted) -> None:
    catalogue, queries, stored = planted
    rows = similar(catalogue, queries[3], 30)
    assert [(row.distance, row.id) for row in rows] == brute_force(stored, queries[3], 30)


def test_similar_rejects_bad_input(catalogue: Catalogue) -> None:
    with pytest.raises(HashFormatError):
        similar(catalogue, "not-a-hash")
    with pytest.raises(QueryError, match=r"max distance must be 0\.\.64"):
        similar(catalogue, "00000000000000ff", 65)
    with pytest.raises(QueryError, match="limit"):
        similar(catalogue, "00000000000000ff", limit=0)
    with pytest.raises(HashFormatError, match="expected 16 hex digits"):
        similar(catalogue, "ff")  # too short: refused, not padded
    with pytest.raises(QueryError, match="64 bits"):
        similar(catalogue, 1 << 64)


def test_close_pairs_equals_brute_force() -> None:
    chooser = random.Random(7)
    values = [chooser.getrandbits(64) for _ in range(300)]
    values += [flip_bits(values[i], i % 9, chooser) for i in range(100)]
    values += [ALL_ZERO, ALL_ONE, 1, ALL_ONE - 1]
    hashes = np.array(values, dtype=np.uint64)
    for radius in (0, 1, 2, 6, 8, 10, 16, 20, 32):
        expected = {
            (i, j)
            for i in range(len(values))
            for j in range(i + 1, len(values))
            if distance(values[i], values[j]) <= radius
        }
        # At radius 32 the index would probe 118,000 chunk values (seconds); radius 20 runs
        # the same code with 19,000.
        for strategy in STRATEGIES if radius < 32 else ("auto", "scan"):
            found = [
                tuple(pair)
                for pairs in close_pairs(hashes, radius, strategy)
                for pair in pairs.tolist()
            ]
            assert sorted(found) == sorted(expected), (radius, strategy)  # each pair once


def test_close_pairs_in_crowded_buckets_equal_the_scan() -> None:
    # 3,000 hashes with the same first chunk: 4.5 million candidate pairs in one bucket, more
    # than the index takes at a time.
    generator = np.random.default_rng(5)
    hashes = generator.integers(0, 1 << 48, size=3000, dtype=np.uint64)
    by_scan = np.concatenate(list(close_pairs(hashes, 12, "scan")))
    by_index = np.concatenate(list(close_pairs(hashes, 12, "index")))
    assert len(by_scan) > 100
    assert sorted(map(tuple, by_index.tolist())) == sorted(map(tuple, by_scan.tolist()))


def brute_force_groups(values: list[int], radius: int) -> list[list[int]]:
    """Connected groups (two or more) of positions, linked by distances within ``radius``."""
    unseen, groups = set(range(len(values))), []
    while unseen:
        group, frontier = [], [min(unseen)]
        unseen.discard(frontier[0])
        while frontier:
            item = frontier.pop()
            group.append(item)
            linked = {j for j in unseen if distance(values[item], values[j]) <= radius}
            unseen -= linked
            frontier += linked
        if len(group) > 1:
            groups.append(sorted(group))
    return groups


def test_duplicate_clusters_equal_brute_force(catalogue: Catalogue) -> None:
    # Chains of hashes a few bits apart, so clusters join through members far from the first.
    chooser = random.Random(11)
    values = [chooser.getrandbits(64) for _ in range(120)]
    values += [flip_bits(values[i // 3], 3 + i % 5, chooser) for i in range(60)]
    values += [flip_bits(values[120 + i], 4, chooser) for i in range(40)]
    values += [values[5], ALL_ZERO, ALL_ONE]  # an equal hash under another URL, and the extremes
    store_results(catalogue, [hashed(f"https://a.test/{i}", v) for i, v in enumerate(values)])
    for radius in (0, 1, 6, 10, 16, 20, 32, 64):
        expected = brute_force_groups(values, radius)
        # The index takes seconds past radius 20 (and auto never picks it there).
        for strategy in STRATEGIES if radius <= 20 else ("auto", "scan"):
            groups = duplicates(catalogue, max_distance=radius, strategy=strategy)
            found = [[member.id - 1 for member in group.members] for group in groups]
            assert found == expected, (radius, strategy)
            for group in groups:
                anchor = group.members[0].pHash
                assert [m.distance for m in group.members] == [
                    distance(anchor, m.pHash) for m in group.members
                ]


def test_duplicates_lists_exact_copies_then_phash_clusters(catalogue: Catalogue) -> None:
    assert duplicates(catalogue) == []
    chooser = random.Random(3)
    base = TOP_BIT | chooser.getrandbits(63)
    other = chooser.getrandbits(64)
    results = [
        hashed("https://a.test/1", base, sha256="1" * 64),
        hashed("https://b.test/1-copy", base, sha256="1" * 64),  # same bytes
        hashed("https://a.test/2", flip_bits(base, 4, chooser), sha256="2" * 64),
        hashed("https://a.test/3", flip_bits(base, 9, chooser), sha256="3" * 64),  # too far
        hashed("https://a.test/4", other, sha256="4" * 64),
        hashed("https://a.test/5", flip_bits(other, 6, chooser), sha256="5" * 64),
        CrawlResult("https://a.test/broken", "failed", reason="undecodable"),
    ]
    store_results(catalogue, results)
    groups = duplicates(catalogue, max_distance=6)
    assert [(group.kind, [m.url for m in group.members]) for group in groups] == [
        ("exact", ["https://a.test/1", "https://b.test/1-copy"]),
        ("similar", ["https://a.test/1", "https://a.test/2"]),
        ("similar", ["https://a.test/4", "https://a.test/5"]),
    ]
    assert [m.distance for m in groups[1].members] == [0, 4]
    assert [m.distance for m in groups[2].members] == [0, 6]
    assert duplicates(catalogue, max_distance=5)[2:] == []  # 6 bits apart is not within 5


def test_show_by_url_and_id(catalogue: Catalogue) -> None:
    metadata = {"height": 2, "width": 3, "pHash": "00000000000000ff", "exif": {}}
    store_results(catalogue, [hashed("https://a.test/x.png", 0xFF)])
    store_results(catalogue, [CrawlResult("https://a.test/gone", "failed", reason="http_404")])
    by_url = show(catalogue, "https://a.test/x.png")
    assert by_url == {"pHash": "00000000000000ff"}
    assert show(catalogue, "1") == by_url == show(catalogue, 1)
    with pytest.raises(ImageNotFoundError, match="no image '99'"):
        show(catalogue, 99)
    with pytest.raises(ImageNotFoundError, match=r"status is failed \(http_404\)"):
        show(catalogue, "https://a.test/gone")
    store_results(catalogue, [CrawlResult("https://a.test/x.png", "ok", metadata=metadata)])
    assert show(catalogue, 1) == metadata


def test_show_by_the_path_a_seed_list_gave(
    catalogue: Catalogue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = tmp_path / "photos" / "cat.jpg"
    store_results(catalogue, [hashed(photo.as_uri(), 0xFF), hashed("https://a.test/HOST", 1)])
    monkeypatch.chdir(tmp_path)
    expected = {"pHash": "00000000000000ff"}
    assert show(catalogue, "photos/cat.jpg") == show(catalogue, str(photo)) == expected
    assert show(catalogue, photo.as_uri()) == expected
    # A URL is found as typed or as the crawl normalised it.
    assert show(catalogue, "HTTPS://A.test/HOST") == {"pHash": "0000000000000001"}
    with pytest.raises(ImageNotFoundError, match=r"no image 'photos/dog\.jpg'"):
        show(catalogue, "photos/dog.jpg")


@pytest.mark.parametrize("key", ["¹", "\u0661", "²3", "-1", "1.0", str(1 << 63), "9" * 40])
def test_show_refuses_keys_that_are_not_ascii_ids(catalogue: Catalogue, key: str) -> None:
    # str.isdigit() accepts "¹" and "\u0661" (Arabic-Indic one), which int() refuses or
    # reads as 1.
    store_results(catalogue, [hashed("https://a.test/x.png", 0xFF)])
    with pytest.raises(ImageNotFoundError, match=f"no image '{key}'"):
        show(catalogue, key)
    with pytest.raises(QueryError, match="empty"):
        show(catalogue, "  ")


def test_stats_counts_by_status_format_and_camera(catalogue: Catalogue) -> None:
    canon = {"format": "jpg", "exif": {"image": {"Make": "Canon", "Model": "EOS 40D"}}}
    results = [
        CrawlResult("https://a.test/1", "ok", metadata=canon),
        CrawlResult("https://a.test/2", "ok", metadata=canon),
        CrawlResult("https://a.test/3", "ok", metadata={"format": "png", "exif": {}}),
        CrawlResult("https://a.test/4", "failed", reason="timeout"),
    ]
    store_results(catalogue, results)
    assert stats(catalogue) == [
        {"facet": "total", "value": "images", "count": 4},
        {"facet": "status", "value": "ok", "count": 3},
        {"facet": "status", "value": "failed", "count": 1},
        {"facet": "format", "value": "jpg", "count": 2},
        {"facet": "format", "value": "png", "count": 1},
        {"facet": "camera", "value": "Canon EOS 40D", "count": 2},
    ]


def test_export_streams_every_row(catalogue: Catalogue) -> None:
    store_results(catalogue, [hashed(f"https://a.test/{i}", -i) for i in range(2500)])
    rows = export(catalogue, "jsonl")
    assert isinstance(rows, Iterator)
    first = next(rows)
    assert first == {
        "id": 1,
        "url": "https://a.test/0",
        "status": "ok",
        "reason": None,
        "metadata": {"pHash": to_hex(0)},
    }
    assert sum(1 for _ in rows) == 2499
    assert next(export(catalogue, "json")) == first
    last = list(export(catalogue, "csv"))[-1]
    assert (last["id"], last["pHash"], last["status"]) == (2500, to_hex(-2499), "ok")
    with pytest.raises(QueryError):
        next(export(catalogue, "xml"))


def run_cli(db_url: str, *arguments: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--db", db_url, *arguments])
    return result.exit_code, result.stdout, result.stderr


def test_cli_commands(db_url: str) -> None:
    code, out, _ = run_cli(db_url, "db", "upgrade")
    head = head_revision()
    assert code == 0
    assert out.strip().endswith(f"upgraded from empty to {head} (revision {head})")
    with open_catalogue(db_url) as catalogue:
        store_results(
            catalogue,
            [
                hashed("https://a.test/near", 0xFF, sha256="a" * 64),
                hashed("https://a.test/copy", 0xFF, sha256="a" * 64),
                hashed("https://a.test/far", ALL_ONE),
            ],
        )
    code, out, _ = run_cli(db_url, "query-similar", "00000000000000fe", "--format", "csv")
    assert code == 0
    assert out.splitlines() == [
        "id,url,pHash,distance,similarity",
        "1,https://a.test/near,00000000000000ff,1,0.984375",
        "2,https://a.test/copy,00000000000000ff,1,0.984375",
    ]
    code, out, _ = run_cli(db_url, "duplicates", "--json")
    assert [row["url"] for row in json.loads(out)] == ["https://a.test/near", "https://a.test/copy"]
    code, out, _ = run_cli(db_url, "show", "3")
    assert json.loads(out) == {"pHash": "ffffffffffffffff"}
    code, out, _ = run_cli(db_url, "stats", "--format", "json")
    assert json.loads(out)[0] == {"facet": "total", "value": "images", "count": 3}
    code, out, _ = run_cli(db_url, "export")
    assert [json.loads(line)["url"] for line in out.splitlines()][-1] == "https://a.test/far"
    code, out, err = run_cli(db_url, "query-similar", "xyz")
    assert (code, out, err.count("\n")) == (1, "", 1)
    assert err.startswith("Error: bad pHash 'xyz'")
    code, _, err = run_cli(db_url, "show", "https://a.test/missing")
    assert (code, err.startswith("Error: no image")) == (1, True)


def test_cli_reports_a_catalogue_broken_after_it_opened_in_one_line(db_url: str) -> None:
    with open_catalogue(db_url) as catalogue, catalogue.engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE images RENAME TO images_gone"))  # revision stays
    for command in (["stats"], ["query-similar", "00000000000000fe"], ["export"]):
        code, out, err = run_cli(db_url, *command)
        assert (code, out, err.count("\n")) == (1, "", 1), command
        assert err.startswith("Error: the catalogue failed: ")
        assert "images" in err  # "no such table: images", 'relation "images" does not exist'


def test_hashes_of_another_algorithm_are_never_compared(catalogue: Catalogue, db_url: str) -> None:
    value = 0x63433B3CCF8E1EBE
    imagehash_row = CrawlResult(
        "https://a.test/imagehash",
        "ok",
        metadata={"pHash": to_hex(value)},
        hash_algorithm="imagehash",
    )
    store_results(
        catalogue,
        [
            hashed("https://a.test/ik-1", value),
            hashed("https://a.test/ik-2", value ^ 1),
            imagehash_row,
        ],
    )
    assert [row.url for row in similar(catalogue, value)] == [
        "https://a.test/ik-1",
        "https://a.test/ik-2",
    ]
    assert [row.url for row in similar(catalogue, value, algorithm="imagehash")] == [
        "https://a.test/imagehash"
    ]
    groups = duplicates(catalogue, 6)
    assert [[member.url for member in group.members] for group in groups] == [
        ["https://a.test/ik-1", "https://a.test/ik-2"]
    ]
    assert duplicates(catalogue, 6, algorithm="imagehash") == []
    code, out, _ = run_cli(
        db_url, "query-similar", to_hex(value), "--hash-algorithm", "imagehash", "--csv"
    )
    assert code == 0 and [line.split(",")[1] for line in out.splitlines()] == [
        "url",
        "https://a.test/imagehash",
    ]
