"""`casefetch receiver`: the webhook receiver's process. It loads the receiver and nothing of
the worker: the process stays as small as the receiver itself."""

from __future__ import annotations

import gc
import logging

import click
from aiohttp import web

from casefetch import logs
from casefetch.errors import CasefetchError
from casefetch_tools.exits import fail
from receiver import ReceiverSettings, create_app
from receiver.app import server_options


@click.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
def receiver(host: str, port: int) -> None:
    """Serve the webhook receiver."""
    try:
        settings = ReceiverSettings.from_env()
    except CasefetchError as exc:
        fail(str(exc))
    logs.setup("INFO")
    logging.getLogger("casefetch.receiver").info(
        "receiver listening on http://%s:%d/webhooks (schemes: %s)",
        host,
        port,
        ", ".join(s.value for s in settings.credentials.schemes),
    )
    app = create_app(settings, host=host)
    # What is loaded by now lives as long as the process: out of the collector's sight, a
    # full collection no longer walks it in the middle of a request (the receiver's p99).
    gc.collect()
    gc.freeze()
    try:
        web.run_app(
            app,
            host=host,
            port=port,
            access_log=None,
            print=None,
            handle_signals=True,
            **server_options(settings),
        )
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}")
    except CasefetchError as exc:  # e.g. the metrics port is taken
        fail(str(exc))
