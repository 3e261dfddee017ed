"""Native libraries called through ctypes: the copies Pillow's wheels bundle and load.

Pillow links libwebp and little-cms (its wheels bundle them under hashed names, such as
``pillow.libs/libwebp-51b0b3f7.so.7.2.0``; distributions link the system's). Importing its
plugin loads the library; the file is then found among the process's mapped files, or by
its usual name where Pillow has none.
"""

import contextlib
import ctypes
import ctypes.util
import importlib
import re
from pathlib import Path


def load(stem: str, pillow_module: str, usual_name: str) -> list[ctypes.CDLL]:
    """The libraries named ``stem`` (e.g. "libwebp") that this process can open, Pillow's
    first: loaded by importing ``pillow_module``, else found as ``usual_name``."""
    with contextlib.suppress(ImportError):  # a Pillow without it: only the system's
        importlib.import_module(pillow_module)
    opened = []
    for path in (*_mapped(stem), ctypes.util.find_library(usual_name)):
        if path:
            try:
                opened.append(ctypes.CDLL(path))
            except OSError:
                continue
    return opened


def _mapped(stem: str) -> list[str]:
    """The files of library ``stem`` mapped into this process (Linux), others whose names
    merely begin with it (libwebpdemux for libwebp) left out."""
    pattern = re.compile(rf"\s(/\S*/{re.escape(stem)}[-.][^/\s]*\.so[^/\s]*)$")
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    found = (pattern.search(line) for line in maps)
    return list(dict.fromkeys(match.group(1) for match in found if match))
