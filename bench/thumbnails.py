"""Benchmark: what thumbnails cost an extraction, and what they add to the catalogue.

Extracts every image of three sets with thumbnails on (``extract.thumbnail_size``, 192)
and off (0), the two alternating image by image in this one process on one core, and
prints per set the median time per image of each, the median of the images' ratios, and
the mean thumbnail size in bytes (the catalogue's extra bytes per image, before the
database's own overhead) and dimensions:

- corpus: every file of ../shared/corpus that extracts (camera photos, mostly 640 x 480);
- web-sized: bench/extract.py's 800 x 600 and 1600 x 1200 JPEG, WebP, PNG, palette PNG and
  GIF, by kind and all together;
- 12 MP photos: bench/extract.py's 4000 x 3000 JPEGs.

Run by hand:  .venv/bin/python -m bench.thumbnails [--rounds 5]
"""

import argparse
import statistics
import time
from collections.abc import Iterable
from pathlib import Path

from bench.extract import CORPUS, photo_files, web_files
from crawler.config import ExtractSettings
from crawler.errors import ImageError
from crawler.extract import extract

ON, OFF = ExtractSettings(), ExtractSettings(thumbnail_size=0)


def corpus_images() -> list[bytes]:
    images = []
    for path in sorted(CORPUS.rglob("*")):
        if not path.is_file():
            continue
        try:
            extract(path.read_bytes(), settings=OFF)
        except ImageError:
            continue
        images.append(path.read_bytes())
    return images


def timed(data: bytes, settings: ExtractSettings) -> float:
    started = time.perf_counter()
    extract(data, settings=settings)
    return time.perf_counter() - started


def measure(label: str, images: list[bytes], rounds: int) -> None:
    """Print the set's line: times off and on (medians), ratio, thumbnail bytes and sizes."""
    thumbnails = [extract(data, settings=ON).thumbnail for data in images]  # also a warm-up
    times: list[tuple[list[float], list[float]]] = [([], []) for _ in images]
    for _ in range(rounds):
        for data, (off, on) in zip(images, times, strict=True):
            off.append(timed(data, OFF))
            on.append(timed(data, ON))
    medians = [(statistics.median(off), statistics.median(on)) for off, on in times]
    made = [thumbnail for thumbnail in thumbnails if thumbnail is not None]
    ratio = statistics.median(on / off for off, on in medians)
    off_ms = statistics.median(off for off, _ in medians) * 1000
    on_ms = statistics.median(on for _, on in medians) * 1000
    extra_ms = statistics.median(on - off for off, on in medians) * 1000
    size = statistics.mean(len(thumbnail.webp) for thumbnail in made)
    longest = statistics.median(max(thumbnail.width, thumbnail.height) for thumbnail in made)
    print(
        f"  {label:<20} {len(images):>4} {len(made):>4}  {off_ms:8.2f}  {on_ms:8.2f}"
        f"  {extra_ms:+7.2f}  {ratio:6.3f}x  {size:8.0f}  {longest:5.0f}",
        flush=True,
    )


def read_all(paths: Iterable[Path]) -> list[bytes]:
    return [path.read_bytes() for path in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    web = {kind: read_all(paths) for kind, paths in web_files().items()}
    sets = {
        "corpus": corpus_images(),
        **web,
        "web-sized, all": [data for images in web.values() for data in images],
        "12 MP photos": read_all(photo_files()),
    }
    print(f"median per image over {rounds} rounds, one core, thumbnails on and off interleaved")
    print(
        f"  {'set':<20} {'n':>4} {'made':>4}  {'off (ms)':>8}  {'on (ms)':>8}  {'extra':>7}"
        f"  {'ratio':>7}  {'bytes':>8}  {'px':>5}"
    )
    for label, images in sets.items():
        measure(label, images, rounds)


if __name__ == "__main__":
    main()
