"""Benchmark: ``crawler extract`` over many photos as a whole process, start-up and exit
included, against the naive script a user would write over the same files.

64 distinct 12-megapixel JPEGs (the eight photos of bench/extract.py, each in its eight
orientations: flips and quarter turns, EXIF kept), cached under bench/.data/. The naive
script is one Python process running Pillow's full decode + imagehash.phash + exifread with
every tag over the files, printing a JSON line each; ``crawler extract --jsonl``
prints the whole metadata object of each. The two alternate, run after run; the figure is
the median of the ratios of neighbouring runs.

Run by hand:  .venv/bin/python -m bench.extract_many [--photos 64] [--runs 5]
"""

import argparse
import os
import statistics
import sys
from pathlib import Path

from PIL import Image

from bench.startup import timed

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "bench" / ".data" / "photos-12mp-oriented"
CRAWLER = str(Path(sys.executable).parent / "crawler")
TRANSPOSES = (None, *Image.Transpose)  # the identity and the seven other orientations
NAIVE = """
import io, json, sys
import exifread, imagehash
from PIL import Image

for name in sys.argv[1:]:
    with open(name, "rb") as handle:
        data = handle.read()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        row = {"source": name, "width": image.width, "height": image.height,
               "format": image.format, "pHash": str(imagehash.phash(image))}
    tags = exifread.process_file(io.BytesIO(data), details=True)
    row["exif"] = {key: str(value) for key, value in tags.items()}
    print(json.dumps(row))
"""


def photo_files(count: int) -> list[Path]:
    """``count`` distinct 12 MP photos, made on first use."""
    from bench.extract import photo_files as bases  # made by the single-image bench

    PHOTOS.mkdir(parents=True, exist_ok=True)
    made = []
    for base in bases():
        with Image.open(base) as original:
            exif = original.info.get("exif", b"")
            for index, transpose in enumerate(TRANSPOSES):
                target = PHOTOS / f"{base.stem}-{index}.jpg"
                if not target.exists():
                    turned = original if transpose is None else original.transpose(transpose)
                    turned.convert("RGB").save(target, "JPEG", quality=90, exif=exif)
                made.append(target)
    if count > len(made):
        raise SystemExit(f"at most {len(made)} photos")
    return made[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--other", metavar="CRAWLER", help="another install's crawler command to time alongside"
    )
    options = parser.parse_args()
    files = [str(path) for path in photo_files(options.photos)]
    naive = [sys.executable, "-c", NAIVE, *files]
    ours = [CRAWLER, "extract", "--jsonl", *files]  # a flag older installs know too
    # bench.extract limits libvips to one thread in its own process; not these.
    env = {name: value for name, value in os.environ.items() if name != "VIPS_CONCURRENCY"}
    timed(ours, env)  # warm the page cache
    load_before = os.getloadavg()
    other = None if options.other is None else [options.other, *ours[1:]]
    naive_times, our_times, other_times = [], [], []
    for _ in range(options.runs):
        naive_times.append(timed(naive, env))
        our_times.append(timed(ours, env))
        if other is not None:
            other_times.append(timed(other, env))
    load_after = os.getloadavg()
    ratios = [n / o for n, o in zip(naive_times, our_times, strict=True)]
    print(
        f"{len(files)} photos of 12 MP, {options.runs} runs each, alternating; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after, on {os.cpu_count()} cores"
    )
    timings = [("naive script", naive_times), ("crawler extract", our_times)]
    if other_times:
        timings.append(("other crawler", other_times))
    for name, values in timings:
        runs = " ".join(f"{value:.2f}" for value in values)
        print(f"  {name + ':':17s} median {statistics.median(values):6.2f} s  (runs: {runs})")
    print(
        f"  speed-up: median {statistics.median(ratios):.2f}x "
        f"({min(ratios):.2f}-{max(ratios):.2f})  (target >= 4x)"
    )
    if other_times:
        other_ratios = [n / o for n, o in zip(naive_times, other_times, strict=True)]
        print(f"  other crawler's speed-up: median {statistics.median(other_ratios):.2f}x")
    sys.exit(0 if statistics.median(ratios) >= 4 else 1)


if __name__ == "__main__":
    main()
