"""The command line as a whole: global options anywhere, catalogues by path, read-only commands
that refuse a catalogue that is not there, every command's output in every format read back,
the Example lines of every help, and what each command imports."""

import csv
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from crawler.catalogue import open_catalogue
from crawler.cli import cli
from crawler.duplicates import duplicates
from crawler.extract import extract
from crawler.hashes import distance, similarity
from crawler.output import cell
from crawler.query import EXPORT_COLUMNS, EXPORT_FORMATS, export, show, similar, stats

REPOSITORY = Path(__file__).resolve().parents[1]
SAMPLES = REPOSITORY / "samples"
CANON = SAMPLES / "images" / "Canon_40D.jpg"
NIKON = SAMPLES / "images" / "Nikon_D70.jpg"
BIN = Path(sys.executable).parent
HASH = "63433b3ccf8e1ebe"
READ_ONLY_COMMANDS = (
    ["stats"],
    ["show", "1"],
    ["query-similar", HASH],
    ["duplicates"],
    ["export"],
    ["serve", "--port", "1"],
)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def sample_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample seed list crawled into a catalogue, once for the module."""
    directory = tmp_path_factory.mktemp("samples")
    database = directory / "samples.db"
    seeds = directory / "seeds.txt"
    # The sample list's images, in its order (Canon_40D.jpg is id 1), by absolute paths.
    lines = (SAMPLES / "seeds.txt").read_text().splitlines()
    images = [REPOSITORY / line for line in lines if line and not line.startswith("#")]
    seeds.write_text("".join(f"{path}\n" for path in images))
    code, out, err = run("--db", str(database), "run", str(seeds), "--quiet")
    assert (code, out, err) == (0, "", "")
    return database


# Where options go


def test_global_options_work_before_and_after_the_command(sample_db: Path, tmp_path: Path) -> None:
    before = run("--db", str(sample_db), "stats", "--json")
    after = run("stats", "--json", "--db", str(sample_db))
    assert before == after and before[0] == 0
    assert json.loads(after[1])[0] == {"facet": "total", "value": "images", "count": 8}
    config = tmp_path / "crawler.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{sample_db}"\n')
    assert run("stats", "--json", "--config", str(config)) == before
    # A nested command takes them too, and one after the command wins over one before it.
    code, out, _ = run("--db", str(tmp_path / "a.db"), "db", "upgrade", "--db", str(tmp_path / "b"))
    assert code == 0 and f"catalogue at sqlite:///{tmp_path / 'b'}: upgraded from empty" in out
    assert not (tmp_path / "a.db").exists()


def test_verbose_after_the_command_raises_the_log_level(tmp_path: Path) -> None:
    database = tmp_path / "new.db"
    quiet = subprocess.run(
        [BIN / "crawler", "db", "upgrade", "--db", str(database)], capture_output=True, text=True
    )
    database.unlink()
    verbose = subprocess.run(
        [BIN / "crawler", "db", "upgrade", "--db", str(database), "-v"],
        capture_output=True,
        text=True,
    )
    assert quiet.returncode == verbose.returncode == 0
    assert quiet.stderr == ""
    assert " INFO alembic.runtime.migration: " in verbose.stderr


def test_db_takes_a_plain_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run("--db", "fresh.db", "db", "upgrade")
    assert code == 0 and out.startswith("catalogue at sqlite:///fresh.db: upgraded from empty")
    assert (tmp_path / "fresh.db").is_file()
    code, out, _ = run("stats", "--db", "fresh.db", "--csv")
    assert (code, out.splitlines()[1]) == (0, "total,images,0")


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=lambda command: command[0])
def test_read_only_commands_refuse_a_mistyped_catalogue_and_do_not_make_it(
    tmp_path: Path, command: list[str]
) -> None:
    mistyped = tmp_path / "corpsu.db"
    for database in (str(mistyped), f"sqlite:///{mistyped}"):
        code, out, err = run("--db", database, *command)
        assert (code, out) == (1, "")
        assert err == (
            f"Error: no catalogue at {mistyped}: the file does not exist "
            "(`crawler run SEEDS` or `crawler db upgrade` makes one)\n"
        )
    assert not mistyped.exists()


def test_run_and_db_upgrade_make_the_catalogue(tmp_path: Path) -> None:
    made = tmp_path / "made.db"
    code, _, _ = run("run", str(SAMPLES / "seeds.txt"), "--db", str(made), "--quiet")
    assert code == 0 and made.is_file()


# Output formats, each read back


def parse(fmt: str, text: str) -> list[dict[str, Any]]:
    """What a reader of ``fmt`` gets back from ``text``: rows as dicts."""
    if fmt == "json":
        value = json.loads(text)
        return value if isinstance(value, list) else [value]
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines()]
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    header, dashes, *lines = text.splitlines()
    spans = [match.span() for match in re.finditer("-+", dashes)]
    spans[-1] = (spans[-1][0], None)  # the last column's values may be wider than its dashes
    names = [header[start:end].strip() for start, end in spans]
    return [
        {name: line[start:end].strip() for name, (start, end) in zip(names, spans, strict=True)}
        for line in lines
    ]


def as_printed(fmt: str, rows: list[dict[str, Any]], columns: list[str]) -> list[dict[str, Any]]:
    """``rows`` as ``parse`` reads them back from ``fmt``: JSON keeps values, a table and CSV
    have text."""
    if fmt in ("json", "jsonl"):
        return [{column: row.get(column) for column in columns} for row in rows]
    return [{column: cell(row.get(column)) for column in columns} for row in rows]


FORMATS = ("table", "json", "jsonl", "csv")


@pytest.mark.parametrize("fmt", FORMATS)
def test_query_similar_in_each_format(sample_db: Path, fmt: str) -> None:
    code, out, _ = run("query-similar", HASH, "--db", str(sample_db), "--format", fmt)
    with open_catalogue(str(sample_db)) as catalogue:
        expected = [row.__dict__ for row in similar(catalogue, HASH)]
    assert len(expected) == 2 and code == 0
    columns = ["id", "url", "pHash", "distance", "similarity"]
    assert parse(fmt, out) == as_printed(fmt, expected, columns)
    assert run("query-similar", HASH, "--db", str(sample_db), f"--{fmt}") == (code, out, "")


@pytest.mark.parametrize("fmt", FORMATS)
def test_duplicates_in_each_format(sample_db: Path, fmt: str) -> None:
    code, out, _ = run("duplicates", "--db", str(sample_db), "--format", fmt)
    with open_catalogue(str(sample_db)) as catalogue:
        groups = duplicates(catalogue)  # the default radius is 10, as everywhere
    expected = [
        {"group": number, "kind": group.kind, **member.__dict__}
        for number, group in enumerate(groups, start=1)
        for member in group.members
    ]
    assert [row["distance"] for row in expected] == [0, 8] and code == 0
    assert [row["keep"] for row in expected] == [True, False]
    columns = [
        *("group", "kind", "id", "url", "keep", "distance"),
        *("width", "height", "size", "pHash", "sha256"),
    ]
    assert parse(fmt, out) == as_printed(fmt, expected, columns)


@pytest.mark.parametrize("fmt", FORMATS)
def test_stats_in_each_format(sample_db: Path, fmt: str) -> None:
    code, out, _ = run("stats", "--db", str(sample_db), "--format", fmt)
    with open_catalogue(str(sample_db)) as catalogue:
        expected = stats(catalogue)
    assert code == 0
    assert parse(fmt, out) == as_printed(fmt, expected, ["facet", "value", "count"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_show_in_each_format_by_id_url_and_path(
    sample_db: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPOSITORY)
    with open_catalogue(str(sample_db)) as catalogue:
        expected = show(catalogue, CANON.as_uri())
    outputs = {
        run("show", key, "--db", str(sample_db), "--format", fmt)
        for key in ("samples/images/Canon_40D.jpg", str(CANON), CANON.as_uri(), "1")
    }
    assert len(outputs) == 1
    ((code, out, _),) = outputs
    assert code == 0
    if fmt in ("json", "jsonl"):
        assert parse(fmt, out) == [expected]
    else:
        columns = [key for key in expected if key != "exif"]
        assert parse(fmt, out) == as_printed(fmt, [expected], columns)
        assert "true" in out.split() or "true" in out.split(",")  # hasColorProfile


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_export_in_each_format(sample_db: Path, fmt: str) -> None:
    code, out, _ = run("export", "--db", str(sample_db), f"--{fmt}")
    with open_catalogue(str(sample_db)) as catalogue:
        expected = list(export(catalogue, fmt))
    assert code == 0 and len(expected) == 8
    assert parse(fmt, out) == as_printed(fmt, expected, list(EXPORT_COLUMNS[fmt]))
    first = parse(fmt, out)[0]
    assert {"id", "url", "status"} <= set(first)
    if fmt == "csv":
        assert first["hasColorProfile"] == "true" and first["pHash"] == "a56a1332cf90e299"
    else:
        assert first["metadata"]["pHash"] == "a56a1332cf90e299"


def test_export_refuses_the_table_format(sample_db: Path) -> None:
    code, _, err = run("export", "--db", str(sample_db), "--format", "table")
    assert code == 2 and "'table' is not one of 'json', 'jsonl', 'csv'" in err


@pytest.mark.parametrize("fmt", FORMATS)
def test_distance_in_each_format(fmt: str) -> None:
    other = "F5D2226CD9D32B16"
    code, out, _ = run("distance", HASH, other, "--format", fmt)
    expected = {"a": HASH, "b": other.lower(), "distance": 27, "similarity": 0.578125}
    assert code == 0
    assert distance(HASH, other) == 27 and similarity(HASH, other) == 0.578125
    assert parse(fmt, out) == as_printed(fmt, [expected], list(expected))


@pytest.mark.parametrize("fmt", FORMATS)
def test_extract_in_each_format(fmt: str) -> None:
    objects = [extract(path.read_bytes()).metadata for path in (CANON, NIKON)]
    code, out, _ = run("extract", str(CANON), str(NIKON), "--format", fmt)
    assert code == 0
    rows = [{"source": str(path), **obj} for path, obj in zip((CANON, NIKON), objects, strict=True)]
    columns = list(rows[0]) if fmt in ("json", "jsonl") else list(rows[0])[:-1]  # no exif
    assert parse(fmt, out) == as_printed(fmt, rows, columns)
    # One image: JSON is the object itself; the other formats give its row, as for several.
    code, out, _ = run("extract", str(CANON), "--format", fmt)
    if fmt == "json":
        assert parse(fmt, out) == objects[:1]
    else:
        assert parse(fmt, out) == as_printed(fmt, rows[:1], columns)


@pytest.mark.parametrize("fmt", ("table", "json", "jsonl"))
def test_run_summary_in_each_format(tmp_path: Path, fmt: str) -> None:
    code, out, _ = run(
        "run", str(SAMPLES / "seeds.txt"), "--db", str(tmp_path / "c.db"), "--format", fmt
    )
    assert code == 0
    if fmt == "table":
        assert out.startswith("Crawl done: 8 URLs stored")
        assert parse(fmt, "\n".join(out.splitlines()[1:]))[0] == {
            "status": "ok",
            "reason": "",
            "count": "8",
        }
    else:
        (summary,) = parse(fmt, out)
        assert (summary["stored"], summary["by_status"]) == (8, {"ok": 8})


def test_hashes_must_have_16_hex_digits(sample_db: Path) -> None:
    for command in (["distance", HASH[1:], HASH], ["query-similar", HASH[1:]]):
        code, out, err = run("--db", str(sample_db), *command)
        assert (code, out) == (1, "")
        assert err == f"Error: bad pHash '{HASH[1:]}': expected 16 hex digits, e.g. {HASH}\n"


# Examples


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


def examples() -> list[str]:
    """Every Example line of every command's help, the root group's first."""
    lines = []
    for path in _commands(cli):
        code, out, _ = run(*path, "--help")
        assert code == 0
        found = re.findall(r"^\s*Example: (.+)$", out, flags=re.MULTILINE)
        assert found, f"crawler {' '.join(path)} --help has no Example"
        lines += found
    return lines


def test_every_help_has_examples_and_they_run(tmp_path: Path) -> None:
    (tmp_path / "samples").symlink_to(SAMPLES)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env = {name: value for name, value in env.items() if not name.startswith("CRAWLER_")}
    for line in examples():
        if " serve" in line:
            _run_serve_example(line, tmp_path, env)
            continue
        done = subprocess.run(
            ["bash", "-c", f"set -eo pipefail; {line}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (done.returncode, done.stderr) == (0, ""), line


def _run_serve_example(line: str, cwd: Path, env: dict[str, str]) -> None:
    # The example's port may be taken on a shared machine: the same command on a free one.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = re.sub(r"--port \d+", f"--port {port}", line)
    with subprocess.Popen(
        shlex.split(command), cwd=cwd, env=env, stdout=subprocess.PIPE, text=True
    ) as server:
        assert server.stdout is not None
        assert server.stdout.readline().startswith(f"Serving on http://127.0.0.1:{port}/")
        server.send_signal(signal.SIGINT)
        assert server.wait(20) == 0


# What each command loads


HEAVY = ("sqlalchemy", "alembic", "aiohttp", "numpy", "pyvips", "PIL", "rich", "uvloop")


def _modules_loaded(tmp_path: Path, *args: str) -> set[str]:
    script = (
        "import sys\n"
        f"sys.argv = ['crawler', *{list(args)!r}]\n"
        "from crawler.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        f"print(' '.join(sorted(name for name in sys.modules if name.split('.')[0] in {HEAVY!r}"
        " or name == 'sqlalchemy.orm'"
        " or name.startswith('crawler.'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.splitlines()[-1].split())


def test_each_command_imports_only_what_it_uses(sample_db: Path, tmp_path: Path) -> None:
    def heavy(modules: set[str]) -> set[str]:
        return {name.split(".")[0] for name in modules if not name.startswith("crawler.")}

    assert heavy(_modules_loaded(tmp_path, "--version")) == set()
    assert heavy(_modules_loaded(tmp_path, "distance", HASH, HASH)) == set()
    for command in (["stats"], ["query-similar", HASH], ["show", "1"]):
        loaded = _modules_loaded(tmp_path, "--db", str(sample_db), *command)
        assert heavy(loaded) == {"sqlalchemy"}, command
        assert "sqlalchemy.orm" not in loaded, command  # the models are Core tables
    one_image = _modules_loaded(tmp_path, "extract", str(CANON))
    assert heavy(one_image) == {"numpy", "pyvips", "PIL"}
    assert "crawler.extraction_pool" not in one_image  # extracted here, no processes started


def test_import_crawler_loads_nothing_until_asked(tmp_path: Path) -> None:
    script = (
        "import sys, crawler\n"
        "before = {m for m in sys.modules if m.startswith(('crawler.', 'sqlalchemy'))}\n"
        "assert callable(crawler.open) and callable(crawler.crawl)\n"
        "print(sorted(before), 'crawler.api' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout == "[] True\n", done.stderr


def test_help_lists_every_command(tmp_path: Path) -> None:
    code, out, _ = run("--help")
    assert code == 0
    listed = re.findall(r"^  ([a-z-]+)  ", out.split("Commands:")[1], flags=re.MULTILINE)
    assert listed == sorted(cli.commands)
    assert {name.split(".")[0] for name in _modules_loaded(tmp_path, "--help")} == {"crawler"}


def test_the_export_command_offers_the_librarys_formats() -> None:
    from crawler.cli import catalogue_commands

    assert catalogue_commands.EXPORT_FORMATS == EXPORT_FORMATS
