"""``crawler extract`` and ``crawler distance``: metadata objects and pHash distances."""

import sys

import click

from crawler.cli.common import EXIT_ERROR, format_option, handle_errors, settings_from
from crawler.config import HASH_ALGORITHMS
from crawler.errors import CrawlerError
from crawler.extract import Extraction, phash
from crawler.oneshot import extract_sources, is_one_image
from crawler.output import to_json, write_rows


@click.command()
@click.argument("sources", nargs=-1, required=True, metavar="PATH_OR_URL...")
@click.option("--jsonl", is_flag=True, help="One JSON object per line, even for one input.")
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
    jsonl: bool,
    hash_algorithm: str | None,
    pixel_limit: int | None,
) -> None:
    """Print ImageKit's metadata object of each image as JSON.

    A directory stands for every image file under it. One image prints pretty JSON;
    several print one line each (`source` added), in the order given, while they are read
    and extracted in parallel. Errors go to stderr, one line each; the exit code is 1 if
    any input failed. An image whose extraction takes longer than crawl.extract_timeout
    fails.

    Example: crawler extract photo.jpg https://example.com/cat.png --jsonl
    """
    settings = settings_from(
        ctx, **{"extract.hash_algorithm": hash_algorithm, "extract.pixel_limit": pixel_limit}
    )
    one_pretty = is_one_image(sources) and not jsonl
    failures: list[str] = []

    def print_result(source: str, result: Extraction | CrawlerError) -> None:
        if isinstance(result, CrawlerError):
            click.echo(f"Error: {result}", err=True)
            failures.append(source)
        elif one_pretty:
            click.echo(to_json(result.metadata, pretty=True))
        else:
            click.echo(to_json({"source": source, **result.metadata}))

    extract_sources(sources, settings, print_result)
    if failures:
        sys.exit(EXIT_ERROR)


@click.command()
@click.argument("hash_a", metavar="HASH1")
@click.argument("hash_b", metavar="HASH2")
@format_option()
@handle_errors
def distance(hash_a: str, hash_b: str, fmt: str) -> None:
    """Hamming distance (0..64) and similarity (1 - distance/64) of two pHashes.

    Example: crawler distance 63433b3ccf8e1ebe f5d2226cd9d32b16
    """
    row = {
        "distance": phash.distance(hash_a, hash_b),
        "similarity": phash.similarity(hash_a, hash_b),
    }
    write_rows([row], ["distance", "similarity"], fmt, sys.stdout)


def register(cli: click.Group) -> None:
    cli.add_command(extract)
    cli.add_command(distance)
