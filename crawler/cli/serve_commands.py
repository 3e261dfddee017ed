"""``crawler serve``: the Metadata API over HTTP."""

import click

from crawler.cli.common import handle_errors, long_running, settings_from


@click.command("serve")
@click.option("--host", help="Address to listen on (default: serve.host, 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default: serve.port, 8080).")
@click.pass_context
@handle_errors
def serve_command(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the Metadata API and the near-duplicates page until Ctrl-C.

    Without serve.api_keys the server listens on loopback only. It announces its URL once it
    listens; a catalogue that does not exist or a port in use is a one-line error instead.

    Example: crawler serve --port 8080
    """
    from crawler.serve import run_server

    long_running()
    settings = settings_from(ctx, **{"serve.host": host, "serve.port": port})
    run_server(settings, lambda url: click.echo(f"Serving on {url} (Ctrl-C stops)"))


def register(cli: click.Group) -> None:
    cli.add_command(serve_command)
