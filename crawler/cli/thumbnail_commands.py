"""``crawler thumbnails``: make the thumbnails a catalogue of local files lacks."""

import dataclasses
import sys

import click

from crawler.cli.common import format_option, handle_errors, long_running, settings_from
from crawler.output import write_object

COUNTS = ("made", "changed", "unreadable")  # crawler.thumbnails.ThumbnailCounts, kept light


@click.command("thumbnails")
@format_option(("table", "json", "jsonl", "csv"))
@click.pass_context
@handle_errors
def thumbnails_command(ctx: click.Context, fmt: str) -> None:
    """Make the missing thumbnails of catalogued local files (file: URLs), reading each file
    again; prints how many were made, how many files changed since they were crawled (crawl
    those again with crawler run --refresh) and how many could not be read.

    A crawl makes thumbnails as it goes; this is for a catalogue crawled before it did, or
    with extract.thumbnail_size = 0.

    \b
    Example: crawler run samples/seeds.txt --db photos.db -q && crawler thumbnails --db photos.db
    """
    from crawler.catalogue import open_catalogue
    from crawler.thumbnails import make_missing_thumbnails

    long_running()
    settings = settings_from(ctx)
    with open_catalogue(settings.database.url, create=False) as catalogue:
        counts = make_missing_thumbnails(catalogue, settings)
    write_object(dataclasses.asdict(counts), COUNTS, fmt, sys.stdout)


def register(cli: click.Group) -> None:
    cli.add_command(thumbnails_command)
