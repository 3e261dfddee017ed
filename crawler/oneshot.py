"""One image at a time: read a local file or fetch a URL, and extract its metadata object.

This is what ``crawler extract`` and the HTTP API's ``/v1/metadata`` do for a single source,
with the same limits as a crawl.
"""

from pathlib import Path

from crawler.config import Settings
from crawler.errors import SourceError
from crawler.extract import Extraction, extract


def read_local(path: str | Path, max_size: int) -> bytes:
    """The bytes of a local file, refusing one larger than ``max_size`` before reading it."""
    file_path = Path(path)
    try:
        size = file_path.stat().st_size
        if file_path.is_dir():
            raise SourceError(f"{path}: is a directory, not an image file")
        if size > max_size:
            raise SourceError(
                f"{path}: {size} bytes is over the limit of {max_size} (crawl.max_size)"
            )
        with file_path.open("rb") as handle:
            return handle.read(max_size + 1)
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except PermissionError:
        raise SourceError(f"{path}: permission denied") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None


def extract_source(source: str, settings: Settings) -> Extraction:
    """The metadata object of the image at ``source``, a local path or file:// URL."""
    path = source.removeprefix("file://") if source.startswith("file://") else source
    data = read_local(path, settings.crawl.max_size)
    return extract(data, source, settings.extract)
