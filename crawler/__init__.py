"""crawler: an image metadata crawler and catalogue.

The Python API is here at the top (``crawler.open``, ``crawler.extract_metadata``,
``crawler.crawl``, ...; see ``crawler.api``), each name imported on first use, so that
``import crawler`` costs nothing. The data's path, one module per stage: ``seeds`` ->
``frontier`` -> ``fetch`` -> ``extract`` -> ``store`` -> ``query``. ``engine`` runs the
stages of a crawl together; ``catalogue`` opens the database; ``cli`` is a thin layer over
all of them.
"""

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module it comes from.
_API = {
    "open": "crawler.api",
    "Catalogue": "crawler.api",
    "extract_metadata": "crawler.api",
    "crawl": "crawler.api",
    "crawl_sync": "crawler.api",
    "distance": "crawler.hashes",
    "similarity": "crawler.hashes",
    "Settings": "crawler.config",
    "load_settings": "crawler.config",
    "CrawlerError": "crawler.errors",
}
__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # what the names above are, for type checkers
    from crawler.api import Catalogue as Catalogue
    from crawler.api import crawl as crawl
    from crawler.api import crawl_sync as crawl_sync
    from crawler.api import extract_metadata as extract_metadata
    from crawler.api import open as open
    from crawler.config import Settings as Settings
    from crawler.config import load_settings as load_settings
    from crawler.errors import CrawlerError as CrawlerError
    from crawler.hashes import distance as distance
    from crawler.hashes import similarity as similarity


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'crawler' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
