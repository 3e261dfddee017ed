"""What every command shares: the root group, the global options, settings, the output
options and error mapping.

Start-up time is part of the interface: the command modules import only click and light
modules of ours when the command line is parsed, and each command imports what it works with
(SQLAlchemy, aiohttp, the extraction code) in its body, so ``crawler distance`` never loads
a database library and ``crawler stats`` never loads an image library.
"""

import functools
import gc
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from crawler import __version__
from crawler.config import Settings, load_settings
from crawler.errors import CrawlerError
from crawler.output import FORMATS

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
LOG_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)

F = TypeVar("F", bound=Callable[..., Any])


def _state(ctx: click.Context) -> dict[str, Any]:
    """What the global options said, kept on the root context whichever command took them."""
    return ctx.find_root().ensure_object(dict)


def _remember(key: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is not None:
            _state(ctx)[key] = value

    return store


def _add_verbosity(ctx: click.Context, _param: click.Parameter, count: int) -> None:
    state = _state(ctx)
    state["verbose"] = state.get("verbose", 0) + count
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(LOG_LEVELS[min(state["verbose"], len(LOG_LEVELS) - 1)])


def global_options() -> list[click.Parameter]:
    """``--config``, ``--db`` and ``-v``: taken before the command or after it, by every
    command (a value after the command wins)."""
    return [
        click.Option(
            ["--config", "config_path"],
            type=click.Path(dir_okay=False),
            expose_value=False,
            callback=_remember("config_path"),
            help="TOML settings file (default: $CRAWLER_CONFIG, else ./crawler.toml if present).",
        ),
        click.Option(
            ["--db", "database_url"],
            metavar="URL|PATH",
            expose_value=False,
            callback=_remember("database_url"),
            help="Catalogue: a database URL or the path of a SQLite file (default: "
            "database.url, $CRAWLER_DATABASE_URL, else crawler.db).",
        ),
        click.Option(
            ["-v", "--verbose"],
            count=True,
            expose_value=False,
            callback=_add_verbosity,
            help="More log output (-vv for debug).",
        ),
    ]


class CrawlerGroup(click.Group):
    """A group whose every command, nested groups' included, takes the global options."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        cmd.params.extend(global_options())
        super().add_command(cmd, name)


@click.group(cls=CrawlerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="crawler")
def cli() -> None:
    """Crawl images into a SQL catalogue of ImageKit-style metadata, and query it.

    Options --db, --config and -v go before or after the command.

    Example: crawler run samples/seeds.txt && crawler stats
    """


cli.params.extend(global_options())


def settings_from(ctx: click.Context, **overrides: Any) -> Settings:
    """Settings for this invocation: file, environment, global flags, then ``overrides``."""
    state = _state(ctx)
    merged = {"database.url": state.get("database_url"), **overrides}
    return load_settings(state.get("config_path"), merged)


def long_running() -> None:
    """Turn the cyclic garbage collector back on, for a command that runs long enough to
    need it. ``main`` starts with it off: during start-up it walks every object the imports
    made again and again, and at exit once more (~0.13 s of a 0.5 s command, measured); the
    objects made so far are frozen out of its sight first, as they live as long as the
    process anyway."""
    gc.freeze()
    gc.enable()


def handle_errors(command: F) -> F:
    """Turn library errors into one line on stderr and a non-zero exit, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except CrawlerError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            if not _is_database_error(exc):
                raise
            from crawler.catalogue import database_problem

            fail(f"the catalogue failed: {database_problem(exc)}")  # broke after it opened

    return wrapper  # type: ignore[return-value]


def _is_database_error(exc: Exception) -> bool:
    # SQLAlchemy is imported by the commands that use it; an error cannot be one of its own
    # unless it was.
    sqlalchemy = sys.modules.get("sqlalchemy")
    return sqlalchemy is not None and isinstance(exc, sqlalchemy.exc.SQLAlchemyError)


def fail(message: str, code: int = EXIT_ERROR) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def format_option(
    choices: Sequence[str] = FORMATS, default: str | None = "table"
) -> Callable[[F], F]:
    """The shared ``--format`` option, and a shorthand flag for each of its choices
    (``--json``, ``--jsonl``, ``--csv``, ``--table``). With ``default=None`` the command
    picks the format itself when none is given."""

    def decorate(command: F) -> F:
        for choice in reversed(choices):
            command = click.option(
                f"--{choice}", "fmt", flag_value=choice, help=f"Shorthand for --format {choice}."
            )(command)
        return click.option(
            "--format",
            "fmt",
            type=click.Choice(choices),
            default=default,
            show_default=default is not None,
            help="Output format.",
        )(command)

    return decorate
