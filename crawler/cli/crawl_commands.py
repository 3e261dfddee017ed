"""``crawler run``: crawl a seed list into the catalogue."""

import sys
from contextlib import nullcontext

import click

from crawler.cli.common import (
    EXIT_INTERRUPTED,
    format_option,
    handle_errors,
    long_running,
    settings_from,
)
from crawler.output import write_object

SUMMARY_FORMATS = ("table", "json", "jsonl")


@click.command()
@click.argument("seeds", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--retry-failed", is_flag=True, help="Fetch this list's failed URLs again.")
@click.option(
    "--refresh",
    is_flag=True,
    help="Revalidate this list's done URLs (If-None-Match / If-Modified-Since).",
)
@click.option("--concurrency", type=int, help="Fetches in flight at once (crawl.concurrency).")
@click.option(
    "--per-host", type=int, help="Fetches in flight per host (crawl.per_host_concurrency)."
)
@click.option(
    "--delay", type=float, help="Seconds between requests to one host (crawl.per_host_delay)."
)
@click.option(
    "--max-size", type=int, metavar="BYTES", help="Largest image to download (crawl.max_size)."
)
@click.option("--no-robots", is_flag=True, help="Ignore robots.txt (crawl.robots = false).")
@click.option("--user-agent", metavar="UA", help="User-Agent header (crawl.user_agent).")
@click.option(
    "--worker-id", metavar="ID", help="Name of this crawler in claims (default host:pid)."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@format_option(SUMMARY_FORMATS)
@click.pass_context
@handle_errors
def run(
    ctx: click.Context,
    seeds: str,
    retry_failed: bool,
    refresh: bool,
    concurrency: int | None,
    per_host: int | None,
    delay: float | None,
    max_size: int | None,
    no_robots: bool,
    user_agent: str | None,
    worker_id: str | None,
    quiet: bool,
    fmt: str,
) -> None:
    """Crawl every URL or path of the SEEDS list into the catalogue.

    One URL (http, https, file) or local path per line; a directory means every image under
    it; SEEDS - reads the list from standard input as it arrives. URLs already done are
    skipped; the catalogue keeps the crawl's state, so several crawlers can share one
    PostgreSQL catalogue and a killed crawl resumes where it stopped. Ctrl-C finishes the
    URLs in flight, stores them and prints the summary (a table, or one JSON object).

    \b
    Example: crawler run samples/seeds.txt --concurrency 16 --per-host 2
    Example: find samples/images -name '*.jpg' | crawler run - --format json
    """
    from crawler.engine import CrawlOptions, run_crawl
    from crawler.progress import ProgressBar, print_summary

    long_running()
    settings = settings_from(
        ctx,
        **{
            "crawl.concurrency": concurrency,
            "crawl.per_host_concurrency": per_host,
            "crawl.per_host_delay": delay,
            "crawl.max_size": max_size,
            "crawl.robots": False if no_robots else None,
            "crawl.user_agent": user_agent,
        },
    )
    options = CrawlOptions(retry_failed=retry_failed, refresh=refresh, worker_id=worker_id)
    show_bar = not quiet and sys.stderr.isatty()
    with ProgressBar() if show_bar else nullcontext() as bar:
        summary = run_crawl(seeds, settings, options=options, progress=bar.update if bar else None)
    if fmt != "table":
        summary_object = summary.as_dict()
        write_object(summary_object, list(summary_object), fmt, sys.stdout)
    elif not quiet:
        print_summary(summary, sys.stdout)
    if summary.interrupted:
        sys.exit(EXIT_INTERRUPTED)


def register(cli: click.Group) -> None:
    cli.add_command(run)
