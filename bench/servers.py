"""The receivers casefetch is compared with, each run in a process of its own.

``python -m bench.servers bare --host H --port P``: (a) the stack's limit, an aiohttp handler
that reads the body and does one redis.asyncio RPUSH of it.
``python -m bench.servers celery --host H --port P``: (b) the common approach, an aiohttp
handler that verifies the HMAC, parses the JSON and calls Celery's ``send_task`` in a thread
pool.

Both take the settings the casefetch receiver takes (REDIS_URL, WEBHOOK_HMAC_KEYS), run with
the access log off like it, and answer 202.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import hmac
import json
import os
from concurrent.futures import ThreadPoolExecutor

import redis.asyncio as aioredis
from aiohttp import web

BARE_QUEUE = "bench.bare"
CELERY_QUEUE = "bench.celery"


def bare_app(redis_url: str) -> web.Application:
    app = web.Application(client_max_size=5 * 1024 * 1024 + 1)
    client = aioredis.Redis.from_url(redis_url, max_connections=256)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        await client.rpush(BARE_QUEUE, body)
        return web.Response(status=202, text="accepted")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def close(app: web.Application) -> None:
        await client.aclose()

    app.router.add_post("/webhooks", handle)
    app.router.add_get("/healthz", healthz)
    app.on_cleanup.append(close)
    return app


def celery_app(redis_url: str, hmac_keys: str) -> web.Application:
    # Optional heavy import: the bare variant stays a bare aiohttp process, as it is measured.
    from celery import Celery

    celery = Celery("bench", broker=redis_url, set_as_current=False)
    celery.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
    secrets = dict(pair.split(":", 1) for pair in hmac_keys.split(",") if pair)
    pool = ThreadPoolExecutor(max_workers=8)
    app = web.Application(client_max_size=5 * 1024 * 1024 + 1)

    def verified(header: str, body: bytes) -> bool:
        scheme, _, value = header.partition(" ")
        key, _, signature = value.rpartition(":")
        secret = secrets.get(key)
        if scheme.lower() != "hmac-sha256" or secret is None:
            return False
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, signature.lower())

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        if not verified(request.headers.get("Authorization", ""), body):
            return web.json_response({"status": "error"}, status=401)
        payload = json.loads(body)
        send = functools.partial(
            celery.send_task, "casefetch.ingest", args=[payload], queue=CELERY_QUEUE
        )
        await asyncio.get_running_loop().run_in_executor(pool, send)
        return web.json_response({"status": "accepted"}, status=202)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_post("/webhooks", handle)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant", choices=["bare", "celery"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    redis_url = os.environ["REDIS_URL"]
    app = (
        bare_app(redis_url)
        if args.variant == "bare"
        else celery_app(redis_url, os.environ.get("WEBHOOK_HMAC_KEYS", ""))
    )
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
