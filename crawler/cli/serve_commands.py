"""``crawler serve``: the Metadata API over HTTP."""

import click

from crawler.cli.common import handle_errors, settings_from
from crawler.serve import run_server


@click.command("serve")
@click.option("--host", help="Address to listen on (default: serve.host, 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default: serve.port, 8080).")
@click.pass_context
@handle_errors
def serve_command(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the Metadata API and the near-duplicates page until Ctrl-C.

    Without serve.api_keys the server listens on loopback only.

    Example: crawler --db postgresql://127.0.0.1/images serve --port 8080
    """
    settings = settings_from(ctx, **{"serve.host": host, "serve.port": port})
    click.echo(f"Serving on http://{settings.serve.host}:{settings.serve.port}/ (Ctrl-C stops)")
    run_server(settings)


def register(cli: click.Group) -> None:
    cli.add_command(serve_command)
