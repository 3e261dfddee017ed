"""Hostile images (issue 15): tiny files claiming pictures that cost gigabytes and seconds to
decode, or that their bytes cannot fill. Each ends within 2 s with a typed error or a
correct object; in the extraction processes the peak RSS stays under the memory limit; the
processes' hard cap stops a decode the estimate let through, and costs only that image."""

import asyncio
import io
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from crawler.config import ExtractSettings
from crawler.errors import ImageError, MemoryLimitError
from crawler.extract import extract
from crawler.extraction_pool import ExtractionFailedError, ExtractionPool
from tests.hostile_images import (
    BYTE_CHANGES,
    HOSTILE,
    Hostile,
    bmp_header,
    damaged,
    small_photo,
)
from tests.tiff_builder import tiff_image

MEMORY_LIMIT = ExtractSettings().memory_limit
TYPED_REASONS = {"too_much_memory", "too_many_pixels", "undecodable", "unsupported_format"}


def peak_rss(pid: int) -> int:
    """The peak resident memory of process ``pid`` (VmHWM), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


@pytest.mark.parametrize("case", HOSTILE, ids=lambda case: case.name)
def test_a_hostile_image_ends_fast_with_its_reason(case: Hostile) -> None:
    data = case.make()
    assert len(data) < 1024
    started = time.monotonic()
    try:
        outcome = extract(data, case.name)
    except ImageError as exc:
        assert exc.reason == case.reason, str(exc)
        assert "\n" not in str(exc) and str(exc).endswith(f" ({case.name})")
    else:
        assert case.reason == "ok"
        assert outcome.metadata["pHash"] == case.phash
    assert time.monotonic() - started < 2


def test_hostile_images_in_the_extraction_processes_stay_under_the_memory_limit() -> None:
    async def run() -> tuple[list[tuple[str, str, float]], dict[int, int], list[int]]:
        outcomes = []
        async with ExtractionPool(2, ExtractSettings(), time_limit=30) as pool:
            started_pids = sorted(pool.process_ids)
            for case in [*HOSTILE, *HOSTILE]:  # twice: both processes meet every case
                started = time.monotonic()
                try:
                    await pool.extraction([case.make()], case.name)
                    reason = "ok"
                except ExtractionFailedError as exc:
                    reason = exc.reason
                outcomes.append((case.name, reason, time.monotonic() - started))
            peaks = {pid: peak_rss(pid) for pid in pool.process_ids}
        return outcomes, peaks, started_pids

    outcomes, peaks, started_pids = asyncio.run(run())
    expected = {case.name: case.reason for case in HOSTILE}
    assert [(name, reason) for name, reason, _ in outcomes] == [
        (name, expected[name]) for name, _, _ in outcomes
    ]
    assert max(seconds for _, _, seconds in outcomes) < 2
    assert sorted(peaks) == started_pids  # no process died or was replaced
    assert max(peaks.values()) < MEMORY_LIMIT, peaks


SEEDS = [case.make() for case in HOSTILE] + [
    small_photo(),
    tiff_image(bytes(16 * 12 * 3), 16, 12, big=True),
    tiff_image(bytes(16 * 12 * 3), 16, 12),
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS), damage=BYTE_CHANGES, keep=st.floats(0.05, 1.0))
def test_damaged_hostile_images_end_fast_and_typed(
    seed: bytes, damage: list[tuple[int, int]], keep: float
) -> None:
    started = time.monotonic()
    try:
        extract(damaged(seed, damage, keep))
    except ImageError as exc:
        assert "\n" not in str(exc)
    assert time.monotonic() - started < 2


def test_one_pixel_limit_for_every_decoder() -> None:
    # 13400 x 13400 is over Pillow's own bomb limit (178,956,970 pixels), which used to
    # decide for BMP and HEIC; now only extract.pixel_limit and extract.memory_limit do.
    data = bmp_header(13400, 13400)
    with pytest.raises(ImageError) as ours:
        extract(data, settings=ExtractSettings(memory_limit=1 << 40))
    assert "cannot hold 13400 x 13400 pixels" in str(ours.value)
    with pytest.raises(ImageError, match="limit of 1000"):
        extract(data, settings=ExtractSettings(pixel_limit=1000))


def _progressive_photo() -> bytes:
    """4000 x 3000, progressive 4:4:4: libjpeg holds 72 MB of coefficients."""
    out = io.BytesIO()
    picture = Image.open(io.BytesIO(small_photo())).resize((4000, 3000))
    picture.save(out, "JPEG", progressive=True, subsampling=0, quality=90)
    return out.getvalue()


CAPPED_DECODE = """
import sys
from crawler.config import ExtractSettings
from crawler.errors import MemoryExhaustedError
from crawler.extract import extract
from crawler.extract.decode_cost import memory_cap
data = sys.stdin.buffer.read()
with memory_cap(48 * 1024 * 1024):
    try:
        extract(data, "photo.jpg", ExtractSettings(memory_limit=1 << 40))  # no estimate
    except MemoryExhaustedError as exc:
        print(exc.reason, exc)
"""


def test_the_cap_stops_a_decode_the_estimate_let_through() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CAPPED_DECODE],
        input=_progressive_photo(),
        capture_output=True,
        timeout=60,
        check=True,
    )
    out = result.stdout.decode()
    assert out.startswith("too_much_memory ran out of memory decoding jpg pixels"), out
    assert out.rstrip().endswith("(photo.jpg)")


def test_a_process_that_runs_out_of_memory_fails_one_image_and_is_replaced() -> None:
    # 64 MiB: not even the copy of an 80 MB body fits under the process's cap
    settings = ExtractSettings(memory_limit=64 * 1024 * 1024)
    photo = small_photo()

    async def run() -> tuple[str, bool, str]:
        async with ExtractionPool(1, settings, time_limit=30) as pool:
            before = pool.process_ids
            with pytest.raises(ExtractionFailedError) as failed:
                await pool.extraction([photo, bytes(80_000_000)], "big.jpg")
            extraction, _ = await pool.extraction([photo], "photo.jpg")
            return failed.value.reason, pool.process_ids != before, extraction.metadata["format"]

    assert asyncio.run(run()) == ("too_much_memory", True, "jpg")


def test_memory_limit_errors_are_413() -> None:
    assert (MemoryLimitError.status, MemoryLimitError.reason) == (413, "too_much_memory")
