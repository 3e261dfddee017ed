"""Catalogue commands: ``db upgrade``, ``query-similar``, ``duplicates``, ``show``, ``stats``,
``export``. Each opens the catalogue named by ``--db`` / ``database.url`` and prints what one
library call returns. Only ``db upgrade`` (and ``crawler run``) make a catalogue; the others
refuse one that does not exist, so a mistyped ``--db`` is an error, not an empty answer."""

import dataclasses
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from crawler.cli.common import (
    CrawlerGroup,
    F,
    format_option,
    handle_errors,
    long_running,
    settings_from,
)
from crawler.config import HASH_ALGORITHMS
from crawler.hashes import DEFAULT_MAX_DISTANCE
from crawler.metadata import FLAT_FIELDS, METADATA_KEYS
from crawler.output import write_object, write_rows

if TYPE_CHECKING:
    from crawler.catalogue import Catalogue

DUPLICATE_COLUMNS = (
    "group",
    "kind",
    "id",
    "url",
    "keep",
    "distance",
    "width",
    "height",
    "size",
    "pHash",
    "sha256",
)
EXPORT_FORMATS = ("json", "jsonl", "csv")  # crawler.query.EXPORT_FORMATS, kept light here


def _open_existing(ctx: click.Context) -> "Catalogue":
    from crawler.catalogue import open_catalogue

    return open_catalogue(settings_from(ctx).database.url, create=False)


def _hash_algorithm_option(command: F) -> F:
    return click.option(
        "--hash-algorithm",
        type=click.Choice(HASH_ALGORITHMS),
        help="Compare only hashes made by this algorithm (default: extract.hash_algorithm).",
    )(command)


def _algorithm(ctx: click.Context, chosen: str | None) -> str:
    return chosen or settings_from(ctx).extract.hash_algorithm


def _max_distance_option(meaning: str) -> Callable[[F], F]:
    return click.option(
        "--max-distance",
        type=click.IntRange(0, 64),
        default=DEFAULT_MAX_DISTANCE,
        show_default=True,
        help=f"Largest pHash distance (bits) {meaning}.",
    )


@click.group(cls=CrawlerGroup)
def db() -> None:
    """Manage the catalogue database.

    Example: crawler --db photos.db db upgrade
    """


@db.command()
@click.pass_context
@handle_errors
def upgrade(ctx: click.Context) -> None:
    """Create the catalogue or bring its schema up to the newest revision.

    Example: crawler db upgrade --db sqlite:///photos.db
    """
    from crawler.catalogue import Catalogue, create_catalogue_engine, upgrade_catalogue

    with Catalogue(create_catalogue_engine(settings_from(ctx).database.url)) as catalogue:
        before, after = upgrade_catalogue(catalogue)
    change = f"upgraded from {before or 'empty'} to {after}" if before != after else "up to date"
    click.echo(f"catalogue at {catalogue.url}: {change} (revision {after})")


@click.command("query-similar")
@click.argument("phash", metavar="HASH")
@_max_distance_option("to report")
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
    """Catalogued images whose pHash is within --max-distance bits of HASH (16 hex digits),
    nearest first.

    Example: crawler query-similar 63433b3ccf8e1ebe --max-distance 8 --limit 20
    """
    from crawler.hashes import parse_hex
    from crawler.query import SimilarRow, similar

    parse_hex(phash)  # a bad hash is the error, whatever the catalogue
    with _open_existing(ctx) as catalogue:
        rows = similar(
            catalogue, phash, max_distance, limit, algorithm=_algorithm(ctx, hash_algorithm)
        )
    columns = [field.name for field in dataclasses.fields(SimilarRow)]
    write_rows((dataclasses.asdict(row) for row in rows), columns, fmt, sys.stdout)


@click.command("duplicates")
@_max_distance_option("that links two images into one group")
@click.option(
    "--redundant",
    is_flag=True,
    help="List instead every image that is not the one to keep, with the id (keep_id) of "
    "the copy to keep in its group.",
)
@_hash_algorithm_option
@format_option()
@click.pass_context
@handle_errors
def duplicates_command(
    ctx: click.Context, max_distance: int, redundant: bool, hash_algorithm: str | None, fmt: str
) -> None:
    """Groups of near-identical images: same SHA-256 first, then pHash clusters; one row per
    image, numbered by group, the copy to keep first (keep = true). The copy to keep has
    the most pixels, then the largest file, then was seen first (lowest id).

    \b
    Example: crawler duplicates --max-distance 4 --format csv > duplicates.csv
    Example: crawler duplicates --redundant --csv > redundant.csv
    """
    from crawler.duplicates import RedundantImage, duplicates, redundant_images

    long_running()
    algorithm = _algorithm(ctx, hash_algorithm)
    if redundant:
        with _open_existing(ctx) as catalogue:
            images = redundant_images(catalogue, max_distance, algorithm=algorithm)
        columns = [field.name for field in dataclasses.fields(RedundantImage)]
        write_rows((dataclasses.asdict(image) for image in images), columns, fmt, sys.stdout)
        return
    with _open_existing(ctx) as catalogue:
        groups = duplicates(catalogue, max_distance, algorithm=algorithm)
    rows = (
        {"group": number, "kind": group.kind, **dataclasses.asdict(member)}
        for number, group in enumerate(groups, start=1)
        for member in group.members
    )
    write_rows(rows, DUPLICATE_COLUMNS, fmt, sys.stdout)


@click.command("show")
@click.argument("key", metavar="ID|URL|PATH")
@format_option(default="json")
@click.pass_context
@handle_errors
def show_command(ctx: click.Context, key: str, fmt: str) -> None:
    """Print the stored metadata object of one catalogued image, by id, URL or the path a
    seed list gave (a table or CSV has the top-level fields, without the EXIF sections).

    \b
    Example: crawler show samples/images/Canon_40D.jpg
    Example: crawler show 1 --format csv
    """
    from crawler.query import show

    with _open_existing(ctx) as catalogue:
        metadata = show(catalogue, key)
    columns = METADATA_KEYS if fmt in ("json", "jsonl") else FLAT_FIELDS
    write_object(metadata, columns, fmt, sys.stdout)


@click.command("stats")
@format_option()
@click.pass_context
@handle_errors
def stats_command(ctx: click.Context, fmt: str) -> None:
    """Counts of catalogued images: in all, by status, by format and by camera.

    Example: crawler stats --format json
    """
    from crawler.query import STATS_COLUMNS, stats

    with _open_existing(ctx) as catalogue:
        write_rows(stats(catalogue), STATS_COLUMNS, fmt, sys.stdout)


@click.command("export")
@format_option(EXPORT_FORMATS, default="jsonl")
@click.pass_context
@handle_errors
def export_command(ctx: click.Context, fmt: str) -> None:
    """Stream the whole catalogue to stdout: JSON lines or a JSON array (id, URL, status,
    reason and metadata object of each image), or CSV (the typed columns).

    \b
    Example: crawler export > catalogue.jsonl
    Example: crawler export --format csv > catalogue.csv
    """
    from crawler.query import EXPORT_COLUMNS, export

    long_running()
    with _open_existing(ctx) as catalogue:
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
