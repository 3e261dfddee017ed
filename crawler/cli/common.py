"""What every command shares: the root group, settings, output options and error mapping."""

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import sqlalchemy as sa

from crawler import __version__
from crawler.catalogue import database_problem
from crawler.config import Settings, load_settings
from crawler.errors import CrawlerError
from crawler.output import FORMATS

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="crawler")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML settings file (default: $CRAWLER_CONFIG, else ./crawler.toml if present).",
)
@click.option(
    "--db",
    "database_url",
    metavar="URL",
    help="Catalogue database URL (default: database.url, $CRAWLER_DATABASE_URL, "
    "else sqlite:///crawler.db).",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(
    ctx: click.Context, config_path: str | None, database_url: str | None, verbose: int
) -> None:
    """Crawl images into a SQL catalogue of ImageKit-style metadata, and query it.

    Example: crawler run seeds.txt && crawler stats
    """
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = {"config_path": config_path, "overrides": {"database.url": database_url}}


def settings_from(ctx: click.Context, **overrides: Any) -> Settings:
    """Settings for this invocation: file, environment, global flags, then ``overrides``."""
    state = ctx.find_root().obj or {}
    merged = {**state.get("overrides", {}), **overrides}
    return load_settings(state.get("config_path"), merged)


def handle_errors(command: F) -> F:
    """Turn library errors into one line on stderr and a non-zero exit, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except CrawlerError as exc:
            fail(str(exc))
        except sa.exc.SQLAlchemyError as exc:  # the catalogue broke after it opened
            fail(f"the catalogue failed: {database_problem(exc)}")
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: int = EXIT_ERROR) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def format_option(default: str = "table", choices: tuple[str, ...] = FORMATS) -> Callable[[F], F]:
    """The shared ``--format`` option, with ``--json`` and ``--csv`` as shorthands."""

    def decorate(command: F) -> F:
        command = (
            click.option("--csv", "fmt", flag_value="csv", help="Shorthand for --format csv.")(
                command
            )
            if "csv" in choices
            else command
        )
        command = (
            click.option("--json", "fmt", flag_value="json", help="Shorthand for --format json.")(
                command
            )
            if "json" in choices
            else command
        )
        return click.option(
            "--format",
            "fmt",
            type=click.Choice(choices),
            default=default,
            show_default=True,
            help="Output format.",
        )(command)

    return decorate
