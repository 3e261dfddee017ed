"""Benchmark: time per image of the full metadata object vs the naive pipeline, on one core.

Photo-sized inputs: 12-megapixel JPEGs made from the corpus photos (a real 12 MP photo as it
is, the others upscaled to 4000 x 3000 with their EXIF kept), cached under bench/.data/.
Naive pipeline: Pillow full decode + imagehash.phash + exifread with every tag. Both run in
this one process with libvips limited to one thread, alternating image by image.

Run by hand:  .venv/bin/python bench/extract.py [--rounds 5]
"""

import argparse
import io
import logging
import os
import statistics
import sys
import time
from pathlib import Path

os.environ["VIPS_CONCURRENCY"] = "1"  # one core: must be set before libvips loads

import exifread
import imagehash
from PIL import Image

from crawler.extract import extract

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
DATA = Path(__file__).resolve().parent / ".data" / "photos-12mp"
REAL_12MP = "exif-samples/jpg/tests/42_IndexError.jpg"
TO_UPSCALE = (
    "exif-samples/jpg/mobile/jolla.jpg",
    "exif-samples/jpg/hdr/iphone_hdr_NO.jpg",
    "exif-samples/jpg/hdr/canon_hdr_YES.jpg",
    "exif-samples/jpg/mobile/HMD_Nokia_8.3_5G.jpg",
    "imagekit-docs/first.jpg",
    "imagekit-docs/second.jpg",
    "exif-samples/jpg/tests/35-empty.jpg",
)


def photo_files() -> list[Path]:
    """The benchmark photos, made on first use."""
    DATA.mkdir(parents=True, exist_ok=True)
    made = [DATA / Path(REAL_12MP).name]
    if not made[0].exists():
        made[0].write_bytes((CORPUS / REAL_12MP).read_bytes())
    for name in TO_UPSCALE:
        target = DATA / f"12mp-{Path(name).name}"
        if not target.exists():
            with Image.open(CORPUS / name) as original:
                exif = original.info.get("exif", b"")
                big = original.convert("RGB").resize((4000, 3000), Image.Resampling.LANCZOS)
                big.save(target, "JPEG", quality=90, exif=exif)
        made.append(target)
    return made


def naive(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        imagehash.phash(image)
    exifread.process_file(io.BytesIO(data), details=True)


def ours(data: bytes) -> None:
    extract(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    logging.getLogger("exifread").setLevel(logging.ERROR)  # maker-note warnings per image
    photos = [path.read_bytes() for path in photo_files()]
    timings: dict[str, list[float]] = {"naive": [], "crawler": []}
    for data in photos:  # warm-up: first calls load codecs
        ours(data)
        naive(data)
    for _ in range(rounds):
        for data in photos:
            for name, run in (("naive", naive), ("crawler", ours)):
                started = time.perf_counter()
                run(data)
                timings[name].append(time.perf_counter() - started)
    naive_ms = statistics.median(timings["naive"]) * 1000
    ours_ms = statistics.median(timings["crawler"]) * 1000
    print(f"{len(photos)} photos of ~12 MP x {rounds} rounds, one core (median per image)")
    print(f"  naive (Pillow full decode + imagehash.phash + exifread): {naive_ms:7.1f} ms")
    print(f"  crawler extract (full metadata object):                 {ours_ms:7.1f} ms")
    print(f"  speed-up: {naive_ms / ours_ms:.1f}x  (target >= 4x)")
    print(f"  single-core rate: {1000 / ours_ms:.1f} images/s")
    sys.exit(0 if naive_ms / ours_ms >= 4 else 1)


if __name__ == "__main__":
    main()
