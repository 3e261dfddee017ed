"""``crawler extract`` and ``crawler distance`` as a user runs them."""

import json
import resource
from pathlib import Path

import pytest
from click.testing import CliRunner

from crawler.cli import cli
from crawler.extract import extract
from tests.faultserver import FaultServer
from tests.hostile_images import jpeg
from tests.slow_image import interlaced_png
from tests.test_image import GRADIENT_PHASH, bigtiff

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "images"
CANON = SAMPLES / "Canon_40D.jpg"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("hash_a", "hash_b", "distance", "similarity"),
    [
        ("63433b3ccf8e1ebe", "f5d2226cd9d32b16", "27", "0.578125"),
        ("63433b3ccf8e1ebe", "61433b3fcf8f9faf", "8", "0.875"),
    ],
)
def test_distance_gives_imagekits_documented_figures(
    hash_a: str, hash_b: str, distance: str, similarity: str
) -> None:
    code, out, _ = run("distance", hash_a, hash_b)
    assert code == 0
    assert out.splitlines()[-1].split() == [hash_a, hash_b, distance, similarity]
    code, out, _ = run("distance", hash_a, hash_b, "--json")
    assert json.loads(out) == {
        "a": hash_a,
        "b": hash_b,
        "distance": int(distance),
        "similarity": float(similarity),
    }


def test_distance_with_bad_hex_is_a_one_line_error() -> None:
    code, out, err = run("distance", "63433b3ccf8e1ebe", "not-a-hash")
    assert code == 1 and out == ""
    assert (
        err.strip()
        == "Error: bad pHash 'not-a-hash': expected 16 hex digits, e.g. 63433b3ccf8e1ebe"
    )


def test_extract_one_file_prints_the_object_as_pretty_json() -> None:
    code, out, _ = run("extract", str(CANON))
    assert code == 0
    assert "\n  " in out
    assert json.loads(out) == extract(CANON.read_bytes()).metadata
    assert list(json.loads(out))[:3] == ["height", "width", "size"]


def test_extract_refuses_a_decompression_bomb_in_one_line_under_a_memory_cap(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bomb.jpg"
    path.write_bytes(jpeg("RGB", 16383, 16383, progressive=True, subsampling=0))
    before = resource.getrlimit(resource.RLIMIT_DATA)
    code, out, err = run("extract", str(path))
    assert (code, out) == (1, "")
    assert err.startswith("Error: image needs too much memory to decode: about 1,669 MB")
    assert err.count("\n") == 1
    assert resource.getrlimit(resource.RLIMIT_DATA) == before  # the cap is lifted after


def test_extract_reads_a_bigtiff(tmp_path: Path) -> None:
    # its magic number is not classic TIFF's: the fetcher's check took it for no image
    path = tmp_path / "big.tif"
    path.write_bytes(bigtiff())
    code, out, err = run("extract", str(path))
    assert (code, err) == (0, "")
    assert json.loads(out)["pHash"] == GRADIENT_PHASH


def test_extract_jsonl_prints_a_line_per_input_and_fails_on_a_bad_one(tmp_path: Path) -> None:
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello\n")
    missing = tmp_path / "missing.jpg"
    code, out, err = run("extract", "--jsonl", str(CANON), str(not_an_image), str(missing))
    assert code == 1
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["source"] for line in lines] == [str(CANON)]
    errors = err.splitlines()
    assert len(errors) == 2
    assert str(not_an_image) in errors[0] and errors[0].startswith("Error: ")
    assert errors[1] == f"Error: {missing.as_uri()}: no such file"


def test_extract_a_url_from_a_server_and_a_file_url() -> None:
    with FaultServer({"canon.jpg": CANON.read_bytes()}) as server:
        code, out, _ = run("extract", server.url("/img/canon.jpg"), CANON.as_uri(), "--jsonl")
        missing_code, _, missing_err = run("extract", server.url("/missing"))
    assert code == 0
    first, second = (json.loads(line) for line in out.splitlines())
    assert first.pop("source").endswith("/img/canon.jpg")
    assert second.pop("source") == CANON.as_uri()
    assert first == second == extract(CANON.read_bytes()).metadata
    assert missing_code == 1 and "404" in missing_err and "\n" not in missing_err.strip()


def test_extract_reports_in_the_order_given_though_the_first_is_the_slowest(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "missing.jpg"
    with FaultServer({"canon.jpg": CANON.read_bytes()}, image_delay=0.5) as server:
        slow_url = server.url("/slowimg/canon.jpg")
        code, out, err = run("extract", slow_url, str(missing), str(CANON))
    assert code == 1
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line.pop("source") for line in lines] == [slow_url, str(CANON)]
    assert lines[0] == lines[1] == extract(CANON.read_bytes()).metadata
    assert err == f"Error: {missing.as_uri()}: no such file\n"


def test_extract_fails_an_image_over_the_time_limit_and_goes_on(tmp_path: Path) -> None:
    config = tmp_path / "crawler.toml"
    config.write_text("[crawl]\nextract_timeout = 0.5\n")
    slow = tmp_path / "slow.png"
    slow.write_bytes(interlaced_png(16000))  # ~1.9 s to extract on the project's VM
    code, out, err = run("--config", str(config), "extract", str(slow), str(CANON))
    assert code == 1
    assert [json.loads(line)["source"] for line in out.splitlines()] == [str(CANON)]
    assert err == f"Error: {slow}: extraction took over 0.5 s (crawl.extract_timeout)\n"


def test_extract_of_a_directory_gives_every_image_under_it(tmp_path: Path) -> None:
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / "b" / "c" / "one.JPG").write_bytes(CANON.read_bytes())
    (tmp_path / "a.jpg").write_bytes(CANON.read_bytes())
    (tmp_path / "notes.txt").write_text("not an image\n")
    empty = tmp_path / "b" / "empty"
    empty.mkdir()
    code, out, err = run("extract", str(tmp_path))
    assert code == 0 and err == ""
    lines = [json.loads(line) for line in out.splitlines()]
    expected = [str(tmp_path / "a.jpg"), str(tmp_path / "b" / "c" / "one.JPG")]
    assert [line.pop("source") for line in lines] == expected
    assert lines == [extract(CANON.read_bytes()).metadata] * 2
    code, out, err = run("extract", str(empty))
    assert (code, out) == (1, "")
    assert err == f"Error: {empty}: no image files in this directory\n"


def test_extract_honours_the_hash_algorithm_and_pixel_limit() -> None:
    code, out, _ = run("extract", str(CANON), "--hash-algorithm", "imagehash")
    assert code == 0
    assert json.loads(out)["pHash"] != extract(CANON.read_bytes()).metadata["pHash"]
    code, _, err = run("extract", str(CANON), "--pixel-limit", "100")
    assert code == 1 and "pixel" in err.lower()
