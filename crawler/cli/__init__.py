"""The ``crawler`` command: a thin layer over the library.

Each command parses its options, calls one library function, prints the result, and maps
library errors to a one-line message and an exit code. Commands live in one module per area
and are registered here; each imports the library it calls only when it runs.
"""

import atexit
import gc

from crawler.cli import (
    catalogue_commands,
    crawl_commands,
    extract_commands,
    serve_commands,
    thumbnail_commands,
)
from crawler.cli.common import cli

for module in (
    extract_commands,
    catalogue_commands,
    crawl_commands,
    serve_commands,
    thumbnail_commands,
):
    module.register(cli)


def main() -> None:
    # The collector is off while the command starts (crawler.cli.common.long_running says why;
    # the commands that run long turn it back on), and at exit it need not walk what lives
    # until then: the interpreter's last collections took ~0.1 s after the imports.
    gc.disable()
    atexit.register(gc.freeze)
    cli(prog_name="crawler")
