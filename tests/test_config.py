"""config.example.toml documents exactly the settings crawler/config.py has, with their defaults."""

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from crawler.cli import cli
from crawler.config import Settings, load_settings
from crawler.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRAWLER_DATABASE_URL", raising=False)
    monkeypatch.delenv("CRAWLER_CONFIG", raising=False)


def dotted_keys(values: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for name, value in values.items():
        if isinstance(value, dict):
            keys |= dotted_keys(value, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def setting_keys(cls: type, prefix: str = "") -> set[str]:
    keys = set()
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(field.type):
            keys |= setting_keys(field.type, f"{prefix}{field.name}.")  # type: ignore[arg-type]
        else:
            keys.add(f"{prefix}{field.name}")
    return keys


def test_example_has_exactly_the_settings_of_config_py() -> None:
    example = tomllib.loads(EXAMPLE.read_text())
    assert dotted_keys(example) == setting_keys(Settings)


def test_example_values_are_the_defaults() -> None:
    assert load_settings(EXAMPLE) == Settings()


def test_every_setting_has_a_comment() -> None:
    paragraph_has_comment = False
    for line in EXAMPLE.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            paragraph_has_comment = False
        elif stripped.startswith("#"):
            paragraph_has_comment = True
        elif re.match(r"^\w+ = ", stripped):
            assert paragraph_has_comment, f"undocumented setting: {stripped}"


def test_bad_value_names_its_key(tmp_path: Path) -> None:
    config = tmp_path / "crawler.toml"
    config.write_text('[crawl.retries]\nattempts = "many"\n')
    with pytest.raises(ConfigError, match=r"^crawl\.retries\.attempts: expected an integer"):
        load_settings(config)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("concurrency = 2.5", r"^crawl\.concurrency: expected an integer, got 2\.5"),
        ("concurrency = 1e400", r"^crawl\.concurrency: expected an integer, got inf"),
        ("per_host_delay = nan", r"^crawl\.per_host_delay: expected a finite number"),
        ("lease_seconds = inf", r"^crawl\.lease_seconds: expected a finite number"),
        (
            "claim_timeout = 60",
            r"^crawl\.claim_timeout: no longer a setting; see crawl\.lease_seconds",
        ),
        ("concurrency = 32000000", r"^crawl\.concurrency: at most 10000, got 32000000"),
        ("extract_workers = 4000", r"^crawl\.extract_workers: at most 256"),
        ("batch_size = 1000000", r"^crawl\.batch_size: at most 10000"),
        ("max_size = 9223372036854775807", r"^crawl\.max_size: at most 2147483647, got 9223"),
        ("extract_timeout = 1e300", r"^crawl\.extract_timeout: at most 86400, got 1e\+300"),
        ("max_seed_line_length = 100", r"^crawl\.max_seed_line_length: at least crawl\.max_url"),
        ('user_agent = "bot/1\\r\\nX-Injected: 1"', r"^crawl\.user_agent: must be printable"),
        ('user_agent = "bot\\u0000"', r"^crawl\.user_agent: must be printable ASCII"),
        ('user_agent = ""', r"^crawl\.user_agent: must be printable ASCII"),
    ],
)
def test_numbers_that_cannot_be_meant_are_refused(tmp_path: Path, line: str, error: str) -> None:
    config = tmp_path / "crawler.toml"
    config.write_text(f"[crawl]\n{line}\n")
    with pytest.raises(ConfigError, match=error):
        load_settings(config)


def test_command_line_overrides_the_file(tmp_path: Path) -> None:
    config = tmp_path / "crawler.toml"
    config.write_text("[crawl]\nconcurrency = 5\nper_host_concurrency = 2\n")
    settings = load_settings(config, {"crawl.concurrency": 3, "crawl.per_host_concurrency": None})
    assert (settings.crawl.concurrency, settings.crawl.per_host_concurrency) == (3, 2)


def numeric_keys(cls: type, prefix: str = "") -> set[str]:
    keys = set()
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(field.type):
            keys |= numeric_keys(field.type, f"{prefix}{field.name}.")  # type: ignore[arg-type]
        elif field.type in (int, float):
            keys.add(f"{prefix}{field.name}")
    return keys


@pytest.mark.parametrize("key", sorted(numeric_keys(Settings)))
def test_every_number_has_an_upper_bound(tmp_path: Path, key: str) -> None:
    section, name = key.rsplit(".", 1)
    config = tmp_path / "crawler.toml"
    config.write_text(f"[{section}]\n{name} = {2**63 - 1}\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: (at most|expected 1\.\.)"):
        load_settings(config)


def test_the_largest_value_of_a_number_from_the_command_line_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "seeds.txt").write_text("")
    for option, value in [("--max-size", str(2**63 - 1)), ("--user-agent", "a\r\nb: c")]:
        result = CliRunner().invoke(cli, ["run", "seeds.txt", option, value])
        assert result.exit_code == 1, result.output
        [line] = result.output.strip().splitlines()
        assert line.startswith(("Error: crawl.max_size: at most", "Error: crawl.user_agent:"))
    assert not (tmp_path / "crawler.db").exists()
