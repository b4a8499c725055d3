"""`casefetch send` and `casefetch demo`: the certificate platform's side, a webhook sent
exactly as it sends one, and a sample platform serving files and announcing cases."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import urllib3

from casefetch import config
from casefetch.errors import CasefetchError
from casefetch_tools import demo as platform
from casefetch_tools.exits import fail
from casefetch_tools.sender import auth_headers


@click.command()
@click.argument("url")
@click.argument("payload", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--bearer", metavar="TOKEN", help="Authenticate with a Bearer token.")
@click.option("--hmac", "hmac_pair", metavar="KEY:SECRET", help="Sign with HMAC-SHA256.")
@click.option("--basic", metavar="USER:PASS", help="Authenticate with HTTP Basic.")
@click.option("--timeout", default=30.0, show_default=True)
def send(
    url: str,
    payload: Path,
    bearer: str | None,
    hmac_pair: str | None,
    basic: str | None,
    timeout: float,
) -> None:
    """Send PAYLOAD to URL exactly as the certificate platform would."""
    if sum(x is not None for x in (bearer, hmac_pair, basic)) != 1:
        fail("give exactly one of --bearer, --hmac or --basic")
    try:
        body = payload.read_bytes()
    except OSError as exc:
        fail(f"cannot read {payload}: {exc.strerror}")
    try:
        headers = auth_headers(body, bearer=bearer, hmac_pair=hmac_pair, basic=basic)
    except ValueError as exc:
        fail(str(exc))
    headers["Content-Type"] = "application/json"
    try:
        response = urllib3.request(
            "POST", url, body=body, headers=headers, timeout=timeout, retries=False
        )
    except urllib3.exceptions.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}", code=1)
    text = response.data.decode("utf-8", "replace")
    click.echo(f"{response.status} {text}")
    if not 200 <= response.status < 300:
        sys.exit(1)


@click.command()
@click.option(
    "--receiver",
    "receiver_url",
    envvar="DEMO_RECEIVER_URL",
    show_default=True,
    default="http://127.0.0.1:8080/webhooks",
    help="Where to POST the webhooks.",
)
@click.option(
    "--host",
    envvar="DEMO_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address the file server listens on.",
)
@click.option("--port", envvar="DEMO_PORT", default=8000, show_default=True, type=int)
@click.option(
    "--public-url",
    envvar="DEMO_PUBLIC_URL",
    default=None,
    help="Base URL the workers fetch the files from [default: http://HOST:PORT].",
)
@click.option(
    "--cases",
    envvar="DEMO_CASES",
    default=3,
    show_default=True,
    type=click.IntRange(0),
    help="How many cases to announce.",
)
@click.option(
    "--interval",
    envvar="DEMO_INTERVAL_SECONDS",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds between two cases.",
)
@click.option("--bearer", metavar="TOKEN", help="Authenticate with a Bearer token.")
@click.option("--hmac", "hmac_pair", metavar="KEY:SECRET", help="Sign with HMAC-SHA256.")
@click.option("--basic", metavar="USER:PASS", help="Authenticate with HTTP Basic.")
def demo(
    receiver_url: str,
    host: str,
    port: int,
    public_url: str | None,
    cases: int,
    interval: float,
    bearer: str | None,
    hmac_pair: str | None,
    basic: str | None,
) -> None:
    """Play the certificate platform: serve sample files, send signed webhooks for them.

    Without --bearer/--hmac/--basic it uses the receiver's own settings (WEBHOOK_HMAC_KEYS,
    WEBHOOK_BEARER_TOKENS or WEBHOOK_BASIC_USERS).
    """
    try:
        if sum(x is not None for x in (bearer, hmac_pair, basic)) > 1:
            fail("give at most one of --bearer, --hmac or --basic")
        credentials = (
            platform.Credentials(bearer, hmac_pair, basic)
            if bearer or hmac_pair or basic
            else platform.Credentials.from_env(config.environ())
        )
        platform.run(
            receiver_url,
            credentials,
            host=host,
            port=port,
            public_url=public_url,
            cases=cases,
            interval=interval,
            echo=click.echo,
        )
    except CasefetchError as exc:
        fail(str(exc), code=1)
