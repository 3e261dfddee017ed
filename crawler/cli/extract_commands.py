"""``crawler extract`` and ``crawler distance``: metadata objects and pHash distances."""

import sys
from typing import TYPE_CHECKING

import click

from crawler.cli.common import (
    EXIT_ERROR,
    format_option,
    handle_errors,
    long_running,
    settings_from,
)
from crawler.config import HASH_ALGORITHMS
from crawler.errors import CrawlerError
from crawler.metadata import FLAT_FIELDS, METADATA_KEYS
from crawler.output import open_writer, write_object

if TYPE_CHECKING:
    from crawler.metadata import Extraction

DISTANCE_COLUMNS = ("a", "b", "distance", "similarity")


@click.command()
@click.argument("sources", nargs=-1, required=True, metavar="PATH_OR_URL...")
@format_option(default=None)
@click.option(
    "--hash-algorithm",
    type=click.Choice(HASH_ALGORITHMS),
    help="pHash algorithm: imagekit (ImageKit's, the default) or imagehash (imagehash.phash).",
)
@click.option("--pixel-limit", type=int, help="Refuse images with more pixels than this.")
@click.pass_context
@handle_errors
def extract(
    ctx: click.Context,
    sources: tuple[str, ...],
    fmt: str | None,
    hash_algorithm: str | None,
    pixel_limit: int | None,
) -> None:
    """Print ImageKit's metadata object of each image.

    A directory stands for every image file under it. One image prints its object as JSON;
    several print one JSON line each (`source` added), in the order given (--format json:
    an array; table and CSV: the top-level fields, without the EXIF sections). A few images
    are extracted right here; a directory or more images are read and extracted in parallel
    by extraction processes. Errors go to stderr, one line each; the exit code is 1 if any
    input failed. An image whose extraction takes longer than crawl.extract_timeout fails.

    \b
    Example: crawler extract samples/images/Canon_40D.jpg
    Example: crawler extract samples/images --format csv
    """
    from crawler.oneshot import extract_sources, is_one_image, runs_in_process

    if not runs_in_process(sources):
        long_running()  # a directory may hold a million images

    settings = settings_from(
        ctx, **{"extract.hash_algorithm": hash_algorithm, "extract.pixel_limit": pixel_limit}
    )
    one_object = is_one_image(sources) and fmt in (None, "json")
    fmt = fmt or ("json" if one_object else "jsonl")
    failures: list[str] = []
    columns = ("source", *(METADATA_KEYS if fmt in ("json", "jsonl") else FLAT_FIELDS))
    rows = None if one_object else open_writer(columns, fmt, sys.stdout)

    def print_result(source: str, result: "Extraction | CrawlerError") -> None:
        if isinstance(result, CrawlerError):
            click.echo(f"Error: {result}", err=True)
            failures.append(source)
        elif rows is None:
            write_object(result.metadata, METADATA_KEYS, fmt, sys.stdout)
        else:
            rows.write({"source": source, **result.metadata})

    if runs_in_process(sources):
        from crawler.extract.decode_cost import memory_cap

        # Extracted in this process, each image under the extraction processes' cap.
        with memory_cap(settings.extract.memory_limit * len(sources)):
            extract_sources(sources, settings, print_result)
    else:
        extract_sources(sources, settings, print_result)
    if rows is not None:
        rows.close()
    if failures:
        sys.exit(EXIT_ERROR)


@click.command()
@click.argument("hash_a", metavar="HASH1")
@click.argument("hash_b", metavar="HASH2")
@format_option()
@handle_errors
def distance(hash_a: str, hash_b: str, fmt: str) -> None:
    """Hamming distance (0..64) and similarity (1 - distance/64) of two pHashes, each 16 hex
    digits.

    Example: crawler distance 63433b3ccf8e1ebe f5d2226cd9d32b16
    """
    from crawler import hashes

    result = {
        "a": hashes.to_hex(hashes.parse_hex(hash_a)),
        "b": hashes.to_hex(hashes.parse_hex(hash_b)),
        "distance": hashes.distance(hash_a, hash_b),
        "similarity": hashes.similarity(hash_a, hash_b),
    }
    write_object(result, DISTANCE_COLUMNS, fmt, sys.stdout)


def register(cli: click.Group) -> None:
    cli.add_command(extract)
    cli.add_command(distance)
