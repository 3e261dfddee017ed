"""The ``crawler`` command: a thin layer over the library.

Each command parses its options, calls one library function, prints the result, and maps
library errors to a one-line message and an exit code. Commands live in one module per area
and are registered here.
"""

from crawler.cli import catalogue_commands, crawl_commands, extract_commands, serve_commands
from crawler.cli.common import cli

for module in (extract_commands, catalogue_commands, crawl_commands, serve_commands):
    module.register(cli)


def main() -> None:
    cli(prog_name="crawler")
