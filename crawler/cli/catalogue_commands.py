"""Catalogue commands: ``db upgrade``, ``query-similar``, ``duplicates``, ``show``, ``stats``,
``export``. Each opens the catalogue named by ``--db`` / ``database.url`` (bringing its schema
up to date) and prints what one ``crawler.query`` call returns."""

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import click

from crawler.catalogue import (
    Catalogue,
    create_catalogue_engine,
    open_catalogue,
    upgrade_catalogue,
)
from crawler.cli.common import F, format_option, handle_errors, settings_from
from crawler.config import HASH_ALGORITHMS
from crawler.output import to_json, write_rows
from crawler.query import (
    DEFAULT_DUPLICATE_DISTANCE,
    DEFAULT_MAX_DISTANCE,
    EXPORT_COLUMNS,
    EXPORT_FORMATS,
    STATS_COLUMNS,
    duplicates,
    export,
    show,
    similar,
    stats,
)

SIMILAR_COLUMNS = ("url", "distance", "similarity", "id", "phash")
DUPLICATE_COLUMNS = ("group", "kind", "id", "url", "distance", "phash", "sha256")


def _open(ctx: click.Context) -> Catalogue:
    return open_catalogue(settings_from(ctx).database.url)


def _hash_algorithm_option(command: F) -> F:
    return click.option(
        "--hash-algorithm",
        type=click.Choice(HASH_ALGORITHMS),
        help="Compare only hashes made by this algorithm (default: extract.hash_algorithm).",
    )(command)


def _algorithm(ctx: click.Context, chosen: str | None) -> str:
    return chosen or settings_from(ctx).extract.hash_algorithm


@click.group()
def db() -> None:
    """Manage the catalogue database.

    Example: crawler --db postgresql://crawler@localhost/images db upgrade
    """


@db.command()
@click.pass_context
@handle_errors
def upgrade(ctx: click.Context) -> None:
    """Create the catalogue or bring its schema up to the newest revision.

    Example: crawler --db sqlite:///photos.db db upgrade
    """
    with Catalogue(create_catalogue_engine(settings_from(ctx).database.url)) as catalogue:
        before, after = upgrade_catalogue(catalogue)
    change = f"upgraded from {before or 'empty'} to {after}" if before != after else "up to date"
    click.echo(f"catalogue at {catalogue.url}: {change} (revision {after})")


def _max_distance_option(default: int, meaning: str) -> Callable[[F], F]:
    return click.option(
        "--max-distance",
        type=click.IntRange(0, 64),
        default=default,
        show_default=True,
        help=f"Largest pHash distance (bits) {meaning}.",
    )


@click.command("query-similar")
@click.argument("phash", metavar="HASH")
@_max_distance_option(DEFAULT_MAX_DISTANCE, "to report")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@_hash_algorithm_option
@format_option()
@click.pass_context
@handle_errors
def query_similar(
    ctx: click.Context,
    phash: str,
    max_distance: int,
    limit: int | None,
    hash_algorithm: str | None,
    fmt: str,
) -> None:
    """Catalogued images whose pHash is within --max-distance bits of HASH, nearest first.

    Example: crawler query-similar 63433b3ccf8e1ebe --max-distance 8 --limit 20
    """
    with _open(ctx) as catalogue:
        rows = similar(
            catalogue, phash, max_distance, limit, algorithm=_algorithm(ctx, hash_algorithm)
        )
    write_rows((dataclasses.asdict(row) for row in rows), SIMILAR_COLUMNS, fmt, sys.stdout)


@click.command("duplicates")
@_max_distance_option(DEFAULT_DUPLICATE_DISTANCE, "that links two images into one group")
@_hash_algorithm_option
@format_option()
@click.pass_context
@handle_errors
def duplicates_command(
    ctx: click.Context, max_distance: int, hash_algorithm: str | None, fmt: str
) -> None:
    """Groups of near-identical images: same SHA-256 first, then pHash clusters.

    Example: crawler duplicates --max-distance 4 --format csv > duplicates.csv
    """
    with _open(ctx) as catalogue:
        groups = duplicates(catalogue, max_distance, algorithm=_algorithm(ctx, hash_algorithm))
    rows = (
        {"group": number, "kind": group.kind, **dataclasses.asdict(member)}
        for number, group in enumerate(groups, start=1)
        for member in group.members
    )
    write_rows(rows, DUPLICATE_COLUMNS, fmt, sys.stdout)


@click.command("show")
@click.argument("url_or_id", metavar="URL_OR_ID")
@click.pass_context
@handle_errors
def show_command(ctx: click.Context, url_or_id: str) -> None:
    """Print the stored metadata object of one catalogued image as JSON.

    Example: crawler show https://example.com/cat.jpg
    """
    with _open(ctx) as catalogue:
        click.echo(to_json(show(catalogue, url_or_id), pretty=True))


@click.command("stats")
@format_option()
@click.pass_context
@handle_errors
def stats_command(ctx: click.Context, fmt: str) -> None:
    """Counts of catalogued images: in all, by status, by format and by camera.

    Example: crawler stats --format json
    """
    with _open(ctx) as catalogue:
        write_rows(stats(catalogue), STATS_COLUMNS, fmt, sys.stdout)


@click.command("export")
@format_option(default="jsonl", choices=EXPORT_FORMATS)
@click.pass_context
@handle_errors
def export_command(ctx: click.Context, fmt: str) -> None:
    """Stream the whole catalogue to stdout: JSONL (URL, status and metadata object per line)
    or CSV (the typed columns).

    Example: crawler export --format csv > catalogue.csv
    """
    with _open(ctx) as catalogue:
        write_rows(export(catalogue, fmt), EXPORT_COLUMNS[fmt], fmt, sys.stdout)


def register(cli: click.Group) -> None:
    commands: tuple[Any, ...] = (
        db,
        query_similar,
        duplicates_command,
        show_command,
        stats_command,
        export_command,
    )
    for command in commands:
        cli.add_command(command)
