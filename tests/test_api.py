"""The Python API at the package's top: the README's examples as a user runs them (the second
inside a running event loop, as in Jupyter), and the calls that must work in one."""

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

import crawler
from crawler.errors import CatalogueError
from crawler.extract import extract
from tests.faultserver import FaultServer

REPOSITORY = Path(__file__).resolve().parents[1]
CANON = REPOSITORY / "samples" / "images" / "Canon_40D.jpg"
RUNNER = """
import ast, asyncio, sys

blocks = [open(name).read() for name in sys.argv[1:]]
namespace = {}
exec(compile(blocks[0], "README example 1", "exec"), namespace)


async def in_a_running_loop():
    asyncio.get_running_loop()  # what a notebook has
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    result = eval(compile(blocks[1], "README example 2", "exec", flags=flags), namespace)
    if result is not None:
        await result


asyncio.run(in_a_running_loop())
print("examples ran")
"""


def readme_python_examples() -> list[str]:
    readme = (REPOSITORY / "README.md").read_text()
    section = readme.split("## The Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_examples_run_the_crawl_awaited_in_a_running_loop(tmp_path: Path) -> None:
    examples = readme_python_examples()
    assert len(examples) == 2 and "await crawler.crawl(" in examples[1]
    (tmp_path / "samples").symlink_to(REPOSITORY / "samples")
    files = []
    for number, example in enumerate(examples, start=1):
        (tmp_path / f"example{number}.py").write_text(example)
        files.append(f"example{number}.py")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no CRAWLER_* settings
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, *files],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("examples ran\n")
    assert (tmp_path / "photos.db").is_file()


async def test_blocking_calls_work_inside_a_running_event_loop(tmp_path: Path) -> None:
    database = tmp_path / "c.db"
    summary = crawler.crawl_sync([str(CANON)], database)
    assert summary.by_status == {"ok": 1}
    with FaultServer({"canon.jpg": CANON.read_bytes()}) as server:
        from_url = crawler.extract_metadata(server.url("/img/canon.jpg"))
    assert from_url == crawler.extract_metadata(CANON) == extract(CANON.read_bytes()).metadata
    with crawler.open(database) as catalogue:
        assert catalogue.show(CANON) == from_url


async def test_an_awaited_crawl_takes_a_seed_list_and_reports_progress(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.txt"
    seeds.write_text(f"{CANON}\n{tmp_path / 'missing.jpg'}\n")
    seen = []
    summary = await crawler.crawl(str(seeds), tmp_path / "c.db", progress=seen.append)
    assert summary.by_status == {"ok": 1, "failed": 1}
    assert summary.by_reason == {"not_found": 1}
    assert seen and seen[-1].stored == 2


def test_open_refuses_a_missing_catalogue_unless_asked_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match=r"no catalogue at .*corpsu\.db: the file does not"):
        crawler.open(tmp_path / "corpsu.db")
    assert not (tmp_path / "corpsu.db").exists()
    with crawler.open(tmp_path / "new.db", create=True) as catalogue:
        assert catalogue.stats()[0] == {"facet": "total", "value": "images", "count": 0}
        assert repr(catalogue) == f"<crawler.Catalogue sqlite:///{tmp_path / 'new.db'}>"


def test_extraction_errors_are_crawler_errors(tmp_path: Path) -> None:
    with pytest.raises(crawler.CrawlerError, match=r"missing\.jpg: no such file"):
        crawler.extract_metadata(tmp_path / "missing.jpg")
    with pytest.raises(crawler.CrawlerError):
        crawler.extract_metadata(b"not an image")


def test_the_top_level_names_are_the_documented_ones() -> None:
    assert set(crawler.__all__) == {
        "__version__",
        "open",
        "Catalogue",
        "extract_metadata",
        "crawl",
        "crawl_sync",
        "distance",
        "similarity",
        "Settings",
        "load_settings",
        "CrawlerError",
    }
    for name in crawler.__all__:
        assert getattr(crawler, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        crawler.nothing  # noqa: B018
    assert asyncio.iscoroutinefunction(crawler.crawl)
