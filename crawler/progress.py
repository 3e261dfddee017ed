"""What a person watching a crawl sees: a rich progress bar on stderr, then a summary."""

import time
from typing import Self, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from crawler.engine import CrawlProgress, CrawlSummary
from crawler.output import write_rows


class ProgressBar:
    """A live bar: stored/total, rate, ok/failed/skipped counts, ETA once the total is known."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("crawling"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.1f}/s"),
            TextColumn(
                "[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/] "
                "[yellow]{task.fields[skipped]} skipped[/]"
            ),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[state]}"),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task(
            "crawl", total=None, rate=0.0, ok=0, failed=0, skipped=0, state=""
        )

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def update(self, progress: CrawlProgress) -> None:
        elapsed = progress.elapsed
        self._progress.update(
            self._task,
            completed=progress.stored,
            total=progress.total,
            rate=progress.stored / elapsed if elapsed > 0 else 0.0,
            ok=progress.ok,
            failed=progress.failed,
            skipped=progress.skipped,
            state=_state(progress),
        )


def _state(progress: CrawlProgress) -> str:
    if progress.catalogue_down_since is None:
        return ""
    waited = time.monotonic() - progress.catalogue_down_since
    return f"[bold red]catalogue unreachable for {waited:.0f} s, retrying[/]"


def print_summary(summary: CrawlSummary, out: TextIO) -> None:
    """The end-of-crawl summary for people: totals, then counts by status and by reason."""
    console = Console(file=out, highlight=False, soft_wrap=True)
    state = "interrupted" if summary.interrupted else "done"
    console.print(
        f"Crawl {state}: {summary.stored} URLs stored in {summary.seconds:.1f}s "
        f"({summary.rate:.1f}/s), {summary.bytes / 1e6:.1f} MB downloaded; "
        f"{summary.seeds} seeds read, {summary.added} new, {summary.requeued} requeued."
    )
    if not summary.stored:
        return
    rows = [
        {"status": status, "count": count} for status, count in sorted(summary.by_status.items())
    ]
    by_reason = sorted(summary.by_reason.items(), key=lambda item: -item[1])
    rows += [{"reason": reason, "count": count} for reason, count in by_reason]
    write_rows(rows, ("status", "reason", "count"), "table", out)
