"""Benchmark: time per image of the full metadata object vs the naive pipeline, on one core.

Two sets, measured in one run, the two pipelines alternating image by image in this one
process (libvips limited to one thread), so that the ratios hold on a noisy machine:

- web-sized: from six corpus photos, JPEGs of 800 x 600 and 1600 x 1200 (~80-350 KB, EXIF
  and colour profiles kept), WebPs of both sizes, and at 800 x 600 a PNG, a palette PNG
  and a GIF;
- photo-sized: 12-megapixel JPEGs (a real 12 MP photo as it is, the others upscaled to
  4000 x 3000 with their EXIF kept).

Both are made on first use and cached under bench/.data/. Naive pipeline: Pillow full
decode + imagehash.phash + exifread with every tag. The figure for a set is the median over
its images of each image's ratio (the median of its naive times over the median of ours).

Run by hand:  .venv/bin/python bench/extract.py [--rounds 5]
"""

import argparse
import io
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ["VIPS_CONCURRENCY"] = "1"  # one core: must be set before libvips loads

import exifread
import imagehash
from PIL import Image, ImageOps

from crawler.extract import extract_metadata

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
DATA = Path(__file__).resolve().parent / ".data"
PHOTOS = DATA / "photos-12mp"
WEB = DATA / "web-sized"
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
WEB_SOURCES = (
    "exif-samples/jpg/mobile/jolla.jpg",
    "exif-samples/jpg/hdr/iphone_hdr_NO.jpg",
    "exif-samples/jpg/hdr/canon_hdr_YES.jpg",
    "imagekit-docs/first.jpg",  # with an sRGB colour profile
    "imagekit-docs/second.jpg",  # with another profile
    "exif-samples/jpg/tests/42_IndexError.jpg",
)
SMALL, LARGE = (800, 600), (1600, 1200)


def photo_files() -> list[Path]:
    """The 12-megapixel photos, made on first use."""
    PHOTOS.mkdir(parents=True, exist_ok=True)
    made = [PHOTOS / Path(REAL_12MP).name]
    if not made[0].exists():
        made[0].write_bytes((CORPUS / REAL_12MP).read_bytes())
    for name in TO_UPSCALE:
        target = PHOTOS / f"12mp-{Path(name).name}"
        if not target.exists():
            with Image.open(CORPUS / name) as original:
                exif = original.info.get("exif", b"")
                big = original.convert("RGB").resize((4000, 3000), Image.Resampling.LANCZOS)
                big.save(target, "JPEG", quality=90, exif=exif)
        made.append(target)
    return made


# kind -> (size, how it is saved)
WEB_KINDS: dict[str, tuple[tuple[int, int], Callable[[Image.Image, Path, dict], None]]] = {
    "jpeg 800x600": (SMALL, lambda im, path, meta: im.save(path, "JPEG", quality=88, **meta)),
    "jpeg 1600x1200": (LARGE, lambda im, path, meta: im.save(path, "JPEG", quality=80, **meta)),
    "webp 800x600": (SMALL, lambda im, path, meta: im.save(path, "WEBP", quality=80)),
    "webp 1600x1200": (LARGE, lambda im, path, meta: im.save(path, "WEBP", quality=80)),
    "png 800x600": (SMALL, lambda im, path, meta: im.save(path, "PNG")),
    "palette png 800x600": (SMALL, lambda im, path, meta: im.quantize(256).save(path, "PNG")),
    "gif 800x600": (SMALL, lambda im, path, meta: im.quantize(256).save(path, "GIF")),
}
SUFFIXES = {"jpeg": ".jpg", "webp": ".webp", "png": ".png", "palette": ".png", "gif": ".gif"}


def web_files() -> dict[str, list[Path]]:
    """The web-sized images by kind, made on first use."""
    WEB.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[Path]] = {kind: [] for kind in WEB_KINDS}
    for name in WEB_SOURCES:
        with Image.open(CORPUS / name) as original:
            meta = {
                key: original.info[key] for key in ("exif", "icc_profile") if key in original.info
            }
            rgb = original.convert("RGB")
        for kind, (size, save) in WEB_KINDS.items():
            suffix = SUFFIXES[kind.split()[0]]
            target = WEB / f"{Path(name).stem}-{kind.replace(' ', '-')}{suffix}"
            if not target.exists():
                portrait = rgb.height > rgb.width
                fitted = ImageOps.fit(
                    rgb, size[::-1] if portrait else size, Image.Resampling.LANCZOS
                )
                save(fitted, target, meta)
            made[kind].append(target)
    return made


def naive(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        imagehash.phash(image)
    exifread.process_file(io.BytesIO(data), details=True)


def ours(data: bytes) -> None:
    extract_metadata(data)  # the object alone, as the naive pipeline (bench/thumbnails.py)


def measure(images: list[bytes], rounds: int) -> list[tuple[float, float]]:
    """(naive, ours) median seconds of each image, the two alternating image by image."""
    for data in images:  # warm-up: first calls load codecs and build tables
        ours(data)
        naive(data)
    timings: list[dict[str, list[float]]] = [{"naive": [], "ours": []} for _ in images]
    for _ in range(rounds):
        for data, times in zip(images, timings, strict=True):
            for name, run in (("naive", naive), ("ours", ours)):
                started = time.perf_counter()
                run(data)
                times[name].append(time.perf_counter() - started)
    return [(statistics.median(t["naive"]), statistics.median(t["ours"])) for t in timings]


def summary(label: str, medians: list[tuple[float, float]]) -> float:
    """Print a set's medians; returns the median of its images' ratios."""
    ratio = statistics.median(naive_s / ours_s for naive_s, ours_s in medians)
    naive_ms = statistics.median(n for n, _ in medians) * 1000
    ours_ms = statistics.median(o for _, o in medians) * 1000
    print(f"  {label:<22} {len(medians):>3}  {naive_ms:8.2f} ms  {ours_ms:8.2f} ms  {ratio:6.2f}x")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    logging.getLogger("exifread").setLevel(logging.ERROR)  # maker-note warnings per image
    web = {kind: [path.read_bytes() for path in paths] for kind, paths in web_files().items()}
    photos = [path.read_bytes() for path in photo_files()]
    kinds = [kind for kind, images in web.items() for _ in images]
    everything = [data for images in web.values() for data in images] + photos
    medians = measure(everything, rounds)
    web_medians, photo_medians = medians[: len(kinds)], medians[len(kinds) :]
    print(f"median per image over {rounds} rounds, one core, both pipelines interleaved")
    print(f"  {'set':<22} {'n':>3}  {'naive':>11}  {'crawler':>11}  speed-up")
    for kind in web:
        summary(kind, [m for m, k in zip(web_medians, kinds, strict=True) if k == kind])
    web_ratio = summary("web-sized, all", web_medians)
    photo_ratio = summary("12 MP photos", photo_medians)
    print(f"targets: web-sized >= 2x ({web_ratio:.2f}x), 12 MP >= 4x ({photo_ratio:.2f}x)")
    sys.exit(0 if web_ratio >= 2 and photo_ratio >= 4 else 1)


if __name__ == "__main__":
    main()
