"""Seed lists: parsing, normalisation, directories, streaming, and dedupe by the catalogue."""

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import example, given, settings
from hypothesis import strategies as st

from crawler.catalogue import open_catalogue
from crawler.errors import SourceError
from crawler.frontier import add_seeds
from crawler.models import images
from crawler.seeds import (
    _CANONICAL_WEB_URL,
    LOCAL_HOST,
    Seed,
    SeedError,
    _normalise_parsed,
    iter_seeds,
    normalise_url,
)


@pytest.mark.parametrize(
    ("seed", "normalised"),
    [
        ("HTTP://Example.COM:80/a b?x=1#top", "http://example.com/a%20b?x=1"),
        ("https://example.com", "https://example.com/"),
        ("https://example.com:443/%7euser/", "https://example.com/~user/"),
        ("https://example.com:8443/a%2Fb?q=%C3%A9", "https://example.com:8443/a%2Fb?q=%C3%A9"),
        ("http://bücher.example/", "http://xn--bcher-kva.example/"),
        ("http://EXAMPLE,X.bücher/", "http://example,x.xn--bcher-kva/"),  # not a DNS name
        ("  http://example.com/x.jpg  ", "http://example.com/x.jpg"),
        ("file:///srv/images/../images/a.jpg", "file:///srv/images/a.jpg"),
    ],
)
def test_normalise_url(seed: str, normalised: str) -> None:
    assert normalise_url(seed) == normalised


def test_plain_paths_become_absolute_file_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalise_url("images/a b.jpg") == (tmp_path / "images" / "a b.jpg").as_uri()
    assert normalise_url("./images/../images/a.jpg") == (tmp_path / "images" / "a.jpg").as_uri()


@settings(max_examples=300)
@given(st.from_regex(_CANONICAL_WEB_URL, fullmatch=True))
@example("http://xn--bcher-kva.example:8080/a.jpg#x")
@example("https://example.com:443/a/b/?q=1")
def test_urls_taken_without_parsing_normalise_as_parsed(seed: str) -> None:
    try:
        parsed = _normalise_parsed(seed)
    except SeedError:
        with pytest.raises(SeedError):
            normalise_url(seed)
    else:
        assert normalise_url(seed) == parsed


_SEED_PIECES = st.sampled_from(
    [*"aZ09.-_~/\\:@[]%#?&$,( \t\0é。", "xn--", "%00", "%2F", "/..", ":80", "://", "\ud800"]
)
_SEED_LINES = st.one_of(
    st.text(),
    *(
        st.lists(_SEED_PIECES, max_size=12).map(lambda pieces, start=start: start + "".join(pieces))
        for start in ("", "http://", "https://", "file://", "~")
    ),
)


@settings(max_examples=500)
@given(_SEED_LINES)
def test_any_seed_line_is_normalised_or_refused_with_a_seed_error(line: str) -> None:
    try:
        normalised = normalise_url(line)
    except SeedError as exc:
        assert str(exc)
    else:
        assert normalised.startswith(("http://", "https://", "file:///"))
        assert normalise_url(normalised) == normalised  # one key for one URL


@pytest.mark.parametrize(
    "seed",
    [
        "ftp://example.com/a.jpg",
        "http:///a.jpg",
        "mailto://x",
        "http://[x/a.jpg",
        "file://[x/a.jpg",
        "http://example.com:99999/a.jpg",
        "http://xn--a.example/a.jpg",  # not valid punycode
        "https://exa mple.com/a.jpg",
        "http://.example.com/a.jpg",
        "http://a..example/a.jpg",
        f"http://{'a' * 64}.example/a.jpg",
        "http://5][i(.example@",  # yarl raised IndexError on this one
        "images/a\0.jpg",
        "file:///images/a%00.jpg",
        "~no-such-user-here/a.jpg",
    ],
)
def test_unusable_seeds_are_refused(seed: str) -> None:
    with pytest.raises(SeedError):
        normalise_url(seed)


def test_seed_list_skips_comments_expands_directories_and_keeps_bad_lines(
    tmp_path: Path,
) -> None:
    tree = tmp_path / "photos"
    (tree / "2024" / "deep").mkdir(parents=True)
    for name in ("b.JPG", "2024/a.png", "2024/deep/c.webp", "2024/notes.txt", "README"):
        (tree / name).write_bytes(b"x")
    seeds = tmp_path / "seeds.txt"
    seeds.write_text(
        "# a comment\n\nhttps://example.com/x.jpg\n   \n  # indented comment\n"
        f"{tree}\nftp://example.com/y.jpg\n"
    )
    *good, bad = iter_seeds(seeds)
    assert good == [
        Seed("https://example.com/x.jpg", host="example.com"),
        Seed((tree / "b.JPG").as_uri(), host=LOCAL_HOST),
        Seed((tree / "2024" / "a.png").as_uri(), host=LOCAL_HOST),
        Seed((tree / "2024" / "deep" / "c.webp").as_uri(), host=LOCAL_HOST),
    ]
    assert bad.url == "ftp://example.com/y.jpg"
    assert "unsupported scheme" in (bad.problem or "")


def test_a_path_too_long_to_look_up_is_a_seed_not_an_error_of_the_list(tmp_path: Path) -> None:
    too_long = tmp_path / ("a" * 300 + ".jpg")  # over NAME_MAX: stat() fails ENAMETOOLONG
    seeds = tmp_path / "seeds.txt"
    seeds.write_text(f"{too_long}\nhttps://example.com/x.jpg\n")
    assert list(iter_seeds(seeds)) == [
        Seed(too_long.as_uri(), host=LOCAL_HOST),
        Seed("https://example.com/x.jpg", host="example.com"),
    ]


def test_a_bracketed_host_that_is_not_ipv6_is_a_bad_seed() -> None:
    # yarl parses it (host ':1') but cannot print it back: a ValueError, not a SeedError
    with pytest.raises(SeedError, match="not an IPv6 address"):
        normalise_url("http://[:1]:80/a.jpg")


def test_missing_seed_list_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="seed list"):
        list(iter_seeds(tmp_path / "nope.txt"))


def test_seed_list_is_streamed(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.txt"
    with seeds.open("w") as handle:
        for number in range(20_000):
            handle.write(f"https://example.com/images/{number:08d}.jpg\n")
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_seeds(seeds))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20_000
    assert peak < 200_000  # the file is 900 kB; a list of its seeds would take over 3 MB


def test_duplicates_after_normalisation_make_one_row(db_url: str, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.txt"
    seeds.write_text(
        "https://example.com/a.jpg\nHTTPS://EXAMPLE.com:443/a.jpg#x\nhttps://example.com/b.jpg\n"
        "ftp://example.com/c.jpg\nftp://example.com/c.jpg\n"
    )
    with open_catalogue(db_url) as catalogue:
        first = add_seeds(catalogue, iter_seeds(seeds))
        again = add_seeds(catalogue, iter_seeds(seeds))
        with catalogue.engine.connect() as connection:
            rows = connection.execute(
                sa.select(images.c.url, images.c.status, images.c.reason).order_by(images.c.url)
            ).all()
    assert (first.seeds, first.added, first.invalid, again.added) == (5, 3, {"bad_url": 1}, 0)
    assert [tuple(row) for row in rows] == [
        ("ftp://example.com/c.jpg", "failed", "bad_url"),
        ("https://example.com/a.jpg", "pending", None),
        ("https://example.com/b.jpg", "pending", None),
    ]


def test_a_line_with_a_nul_byte_is_a_failed_row_on_either_database(
    db_url: str, tmp_path: Path
) -> None:
    seeds = tmp_path / "seeds.txt"
    seeds.write_bytes(b"nul\x00byte.jpg\n\x00\nhttps://example.com/a\x00b.jpg\n")
    with open_catalogue(db_url) as catalogue:
        report = add_seeds(catalogue, iter_seeds(seeds))
        with catalogue.engine.connect() as connection:
            rows = connection.execute(
                sa.select(images.c.url, images.c.status, images.c.error).order_by(images.c.url)
            ).all()
    assert (report.added, report.invalid) == (3, {"bad_url": 2})
    assert [(row.url, row.status) for row in rows] == [
        ("https://example.com/a%00b.jpg", "pending"),  # a URL's NUL is percent-encoded
        ("nul\ufffdbyte.jpg", "failed"),  # PostgreSQL text cannot hold U+0000
        ("\ufffd", "failed"),
    ]
    assert "not a usable path" in rows[1].error and "\x00" not in rows[1].error


def test_a_leading_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.txt"
    seeds.write_bytes(b"\xef\xbb\xbfhttps://example.com/a.jpg\r\nhttps://example.com/b.jpg\r\n")
    assert [seed.url for seed in iter_seeds(seeds)] == [
        "https://example.com/a.jpg",
        "https://example.com/b.jpg",
    ]
    given = ["\ufeffhttps://example.com/a.jpg"]  # a list read from such a file
    assert [seed.url for seed in iter_seeds(given)] == ["https://example.com/a.jpg"]


@pytest.mark.parametrize(
    "seed",
    [
        "javascript:alert(1)",
        "JavaScript:void(0)",
        "data:image/png;base64,iVBORw0KGgo=",
        "mailto:a@b",
        "about:blank",
        "localhost:8080/a.jpg",
        "urn:isbn:0451450523",
        "http:a.jpg",  # no host
    ],
)
def test_every_other_scheme_is_a_bad_url_not_a_path(
    seed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SeedError) as caught:
        normalise_url(seed)
    assert caught.value.reason == "bad_url"


def test_a_drive_letter_an_existing_file_or_a_colon_inside_is_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "IMG:0001.jpg").write_bytes(b"x")
    for path in ["c:\\photos\\a.jpg", "C:/photos/a.jpg", "IMG:0001.jpg", "./javascript:x"]:
        assert normalise_url(path) == (tmp_path / path).resolve().as_uri()
    assert normalise_url("photos/2024:01:01.jpg") == (tmp_path / "photos/2024:01:01.jpg").as_uri()
    with pytest.raises(SeedError, match=r"\./IMG:0002\.jpg for a file of that name"):
        normalise_url("IMG:0002.jpg")  # no such file: a scheme it is


def test_a_line_over_the_limit_is_a_bad_seed_never_held_whole(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.txt"
    with seeds.open("w") as handle:
        handle.write("https://example.com/a.jpg\nhttps://example.com/")
        handle.write("x" * 10_000_000)  # 10 MB
        handle.write("\n#" + "y" * 100_000 + "\nhttps://example.com/b.jpg")
    tracemalloc.start()
    try:
        first, cut, last = iter_seeds(seeds)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
    assert (first.url, last.url) == ("https://example.com/a.jpg", "https://example.com/b.jpg")
    assert cut.reason == "url_too_long"
    assert cut.url.startswith("https://example.com/xxx")
    assert cut.url.endswith("x... (cut: a line of 10000020 characters)")
    assert len(cut.url) < 1100
    assert cut.problem and len(cut.problem) < 200
    assert "over 65536 (crawl.max_seed_line_length)" in cut.problem


def test_a_line_within_the_limit_is_measured_once_normalised() -> None:
    fragment = "#" + "f" * 100
    [seed] = iter_seeds([f"https://example.com/a.jpg{fragment}"], max_url_length=40)
    assert (seed.url, seed.reason) == ("https://example.com/a.jpg", None)
    [seed] = iter_seeds(["https://example.com/" + "a" * 50], max_url_length=40)
    assert seed.reason == "url_too_long"
    [seed] = iter_seeds(["https://example.com/" + "a" * 50], max_line_length=40)
    assert (seed.reason, seed.url) == (
        "url_too_long",
        f"https://example.com/{'a' * 50}... (cut: a line of 70 characters)",
    )


def test_bad_lines_become_the_rows_they_should(db_url: str, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.txt"
    with seeds.open("wb") as handle:
        handle.write(b"\xef\xbb\xbfhttps://example.com/a.jpg\njavascript:alert(1)\n")
        handle.write(b"https://example.com/" + b"x" * 10_000_000 + b"\n")
    with open_catalogue(db_url) as catalogue:
        report = add_seeds(catalogue, iter_seeds(seeds))
        with catalogue.engine.connect() as connection:
            rows = connection.execute(
                sa.select(images.c.url, images.c.status, images.c.reason).order_by(images.c.id)
            ).all()
    assert report.invalid == {"bad_url": 1, "url_too_long": 1}
    assert [(row.status, row.reason) for row in rows] == [
        ("pending", None),
        ("failed", "bad_url"),
        ("failed", "url_too_long"),
    ]
    assert rows[0].url == "https://example.com/a.jpg"
    assert rows[1].url == "javascript:alert(1)"
    assert len(rows[2].url) < 1100


def test_standard_input_has_the_same_rules(tmp_path: Path) -> None:
    database = tmp_path / "c.db"
    crawler = Path(sys.executable).parent / "crawler"
    lines = b"\xef\xbb\xbfjavascript:x\r\nhttps://" + b"y" * 10_000_000 + b"\n"
    finished = subprocess.run(
        [str(crawler), "--db", str(database), "run", "-", "--json"],
        input=lines,
        capture_output=True,
        timeout=60,
    )
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["by_reason"] == {"bad_url": 1, "url_too_long": 1}
