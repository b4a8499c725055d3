"""The HTTP application: ``create_app(settings)`` builds it, clients open on startup."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypedDict

import msgspec
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from casefetch import codec
from casefetch.errors import ConfigError
from casefetch.logs import BatchedLines
from casefetch.protocol import make_delivery, safe_headers
from receiver.auth import AuthError, authenticate_headers, check_signature
from receiver.enqueue import EnqueueError, Enqueuer
from receiver.metrics import ReceiverMetrics
from receiver.settings import ReceiverSettings

log = logging.getLogger("casefetch.receiver")

SETTINGS = web.AppKey("settings", ReceiverSettings)
ENQUEUER = web.AppKey("enqueuer", Enqueuer)
METRICS = web.AppKey("metrics", ReceiverMetrics)
#: The "delivery accepted" line, one per accepted webhook, written in batches.
ACCEPTED_LOG = web.AppKey("accepted_log", BatchedLines)
#: As a header rather than ``content_type=``, which aiohttp takes apart and puts together.
_JSON = {"Content-Type": "application/json"}
#: A case is a few levels deep; far deeper is an attack on whatever walks it next.
MAX_JSON_DEPTH = 64


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"status": "error", "reason": reason}, status=status, headers=headers)


def _unauthorized(settings: ReceiverSettings) -> web.Response:
    return _error(401, "unauthorized", {"WWW-Authenticate": settings.credentials.challenge()})


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None once it passes ``limit`` (read no further)."""
    if request.content_length is not None:
        if request.content_length > limit:
            return None
        if request.content.is_eof():  # all of it is in the buffer: take it, one copy
            return request.content.read_nowait()
        return await request.read()  # known and within the limit: no per-chunk loop
    chunks = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class _CfRefOnly(msgspec.Struct):
    cfRef: Any = None


#: Reads a JSON object's cfRef and only checks the rest is JSON, much cheaper than building the
#: whole object, which the receiver does not need (docs/benchmarks.md#json).
_CF_REF_ONLY = msgspec.json.Decoder(_CfRefOnly)


def _json_object(body: bytes, utf8: bool) -> tuple[bool, Any, str | None]:
    """``(True, its cfRef, None)`` when ``body`` is a JSON object, else ``(False, None, a short
    reason)``; ``utf8`` tells whether it is valid UTF-8. Exactly what the worker's json.loads
    accepts is accepted."""
    # A body with few brackets cannot be too deep. msgspec's grammar is strict JSON, a subset
    # of what json takes, except that it neither checks text it skips is UTF-8 (checked
    # here) nor refuses integers too long for int() (bodies that may hold one are left to
    # json). Anything else (json's NaN, a BOM, UTF-16, invalid UTF-8...) takes the long way.
    brackets = body.count(b"{") + body.count(b"[")
    if utf8 and brackets <= MAX_JSON_DEPTH and not _may_hold_a_huge_integer(body):
        try:
            found = _CF_REF_ONLY.decode(body)
        except msgspec.DecodeError:
            pass
        else:
            return True, found.cfRef, None
    try:
        # orjson parses a case faster than json (docs/benchmarks.md#json). It is stricter (no
        # NaN, no BOM, no UTF-16), so what it refuses gets json's verdict: both sides accept
        # exactly what the worker's json.loads accepts.
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed, problem = _json_verdict(body)
        if problem is not None:
            return False, None, problem
    if not isinstance(parsed, dict):
        return False, None, "body is not a JSON object"
    if brackets > MAX_JSON_DEPTH and _deeper_than(parsed, MAX_JSON_DEPTH):
        return False, None, f"body is nested more than {MAX_JSON_DEPTH} levels deep"
    return True, parsed.get("cfRef"), None


_DIGITS = frozenset(b"0123456789")


def _may_hold_a_huge_integer(body: bytes) -> bool:
    """False when ``body`` cannot hold a run of digits longer than int() takes.

    Such a run covers two consecutive multiples of half the limit: only the bytes there are
    looked at (three for a 5 KiB body).
    """
    limit = sys.get_int_max_str_digits()
    if limit == 0 or len(body) <= limit:
        return False
    samples = body[:: limit // 2]
    return any(a in _DIGITS and b in _DIGITS for a, b in itertools.pairwise(samples))


def _json_verdict(body: bytes) -> tuple[Any, str | None]:
    try:
        return json.loads(body), None
    except UnicodeDecodeError:
        return None, "body is not UTF-8"
    except ValueError:
        return None, "body is not valid JSON"
    except RecursionError:
        return None, "body is nested too deeply"


def _deeper_than(value: dict[str, Any] | list[Any], limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


async def _receive_body(request: web.Request, settings: ReceiverSettings) -> bytes | web.Response:
    """The body, or the answer refusing it (408, 400, 413)."""
    try:
        if request.content.is_eof():  # the whole body is in already: nothing to time out
            body = await _read_body(request, settings.max_body_bytes)
        else:
            async with asyncio.timeout(settings.read_timeout_seconds):
                body = await _read_body(request, settings.max_body_bytes)
    except TimeoutError:
        response = _error(408, "body not received in time")
        response.force_close()
        return response
    except web.RequestPayloadError:  # malformed chunked framing and the like
        return _error(400, "malformed body")
    if body is None:
        return _error(413, f"body larger than {settings.max_body_bytes} bytes")
    return body


#: Headers a request may carry once: two would let two readers of it (a proxy, the
#: receiver, the worker) each take a different one.
SINGLE_HEADERS = ("Authorization", "X-Api-Key", "Content-Type", "Content-Length")


async def handle_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    metrics = request.app[METRICS]
    headers = request.headers
    for name in SINGLE_HEADERS:
        if len(headers.getall(name, ())) > 1:
            return _error(400, f"more than one {name} header")
    try:
        # Everything that does not need the body, an HMAC request's apiKey included, is
        # checked before a byte of it is read.
        scheme, signed = authenticate_headers(
            headers.get("Authorization"), headers.get("X-Api-Key"), settings.credentials
        )
    except AuthError as exc:
        metrics.count_auth_failure(exc.scheme.value if exc.scheme else "none")
        log.info("webhook refused: %s", exc.reason)
        return _unauthorized(settings)

    # The exact header the platform sends is taken as it is; anything else is parsed.
    if (
        headers.get("Content-Type") != "application/json"
        and request.content_type != "application/json"
    ):
        return _error(415, "content type must be application/json")
    # The signature covers the bytes sent; a compressed body would also be inflated before
    # it is counted. The platform never compresses: refuse it (RFC 7694).
    if headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        return _error(
            415,
            "content encoding not supported: send the body uncompressed",
            {"Accept-Encoding": "identity"},
        )
    body = await _receive_body(request, settings)
    if isinstance(body, web.Response):
        return body

    if signed is not None:
        try:
            check_signature(signed, body)
        except AuthError as exc:
            metrics.count_auth_failure(scheme.value)
            log.info("webhook refused: %s", exc.reason)
            return _unauthorized(settings)

    try:
        text: str | None = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    is_object, cf_ref, problem = _json_object(body, utf8=text is not None)
    if not is_object:
        return _error(400, problem or "body is not a JSON object")

    delivery = make_delivery(body, safe_headers(headers.items()), text=text)
    started = time.perf_counter()
    try:
        await request.app[ENQUEUER].enqueue(delivery)
    except EnqueueError as exc:
        log.warning("enqueue failed, answering 503: %s", exc)
        return _error(
            503,
            "queue unavailable, retry later",
            {"Retry-After": str(settings.retry_after_seconds)},
        )
    metrics.enqueue_seconds.observe(time.perf_counter() - started)
    metrics.payload_bytes.observe(len(body))
    request.app[ACCEPTED_LOG].info(
        "delivery accepted",
        deliveryId=delivery["deliveryId"],
        cfRef=cf_ref if isinstance(cf_ref, str) else None,
        scheme=scheme.value,
        bytes=len(body),
    )
    return web.Response(
        body=codec.compact({"status": "accepted", "deliveryId": delivery["deliveryId"]}),
        status=202,
        headers=_JSON,
    )


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    if await request.app[ENQUEUER].ping():
        return web.json_response({"status": "ready"})
    return web.json_response(
        {"status": "redis unavailable"}, status=503, headers={"Retry-After": "5"}
    )


async def handle_metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS].registry
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def counted(route: str, handler: Handler) -> Handler:
    """``handler``, its answers counted by status (a wrapper per route costs less per request
    than a middleware, which aiohttp runs through two more coroutines)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        response = await handler(request)
        request.app[METRICS].count_request(route, response.status)
        return response

    return handle


async def handle_unmatched(request: web.Request) -> web.StreamResponse:
    """What no route serves: 405 with ``Allow`` for a known path, else 404, as aiohttp
    answers them, counted under the route ``unmatched``."""
    allowed = {
        route.method
        for resource in request.app.router.resources()
        if resource.canonical == request.path and resource.canonical != _ANY_PATH
        for route in resource
    }
    request.app[METRICS].count_request("unmatched", 405 if allowed else 404)
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


#: The catch-all route, added last: aiohttp tries it only once no other route matched.
_ANY_PATH = "/{path:.*}"


class ServerOptions(TypedDict):
    keepalive_timeout: float
    lingering_time: float


def server_options(settings: ReceiverSettings) -> ServerOptions:
    """aiohttp server options that bound how long a client may hold a connection.

    ``keepalive_timeout`` also limits the time to send a request's headers: aiohttp drops a
    connection that has not completed a request by then, however slowly it trickles bytes.
    ``lingering_time`` bounds how long the unread rest of a refused body is drained.
    """
    return ServerOptions(
        keepalive_timeout=settings.read_timeout_seconds,
        lingering_time=min(10.0, settings.read_timeout_seconds),
    )


def create_app(
    settings: ReceiverSettings, enqueuer: Enqueuer | None = None, host: str = "127.0.0.1"
) -> web.Application:
    """The receiver; with ``settings.metrics_port`` set, /metrics is served on that port of
    ``host`` only (by an application of its own, started and stopped with this one)."""
    # The body limit is enforced by the handler (it must answer 413 before reading it all);
    # aiohttp's own cap is set just above so it never answers first.
    app = web.Application(client_max_size=settings.max_body_bytes + 1)
    app[SETTINGS] = settings
    app[METRICS] = ReceiverMetrics(CollectorRegistry())
    app[ACCEPTED_LOG] = BatchedLines(log)

    async def open_clients(app: web.Application) -> None:
        app[ENQUEUER] = enqueuer or Enqueuer.to(
            settings.redis, settings.redis_timeout_seconds, settings.min_replicas_ack
        )

    async def close_clients(app: web.Application) -> None:
        app[ACCEPTED_LOG].close()  # every request has been answered: write the last lines
        await app[ENQUEUER].close()

    app.on_startup.append(open_clients)
    app.on_cleanup.append(close_clients)
    app.router.add_post("/webhooks", counted("/webhooks", handle_webhook))
    routes: list[tuple[str, Handler]] = [("/healthz", handle_healthz), ("/readyz", handle_readyz)]
    if settings.metrics_port is None:
        routes.append(("/metrics", handle_metrics))
    else:
        app.cleanup_ctx.append(metrics_server(host, settings.metrics_port))
    for route, handler in routes:
        app.router.add_get(route, counted(route, handler))
    app.router.add_route("*", _ANY_PATH, handle_unmatched)
    return app


def metrics_server(host: str, port: int) -> Callable[[web.Application], AsyncIterator[None]]:
    """Serves the application's /metrics on ``host``:``port`` while it runs, and nothing else
    there (404)."""

    async def serve(app: web.Application) -> AsyncIterator[None]:
        metrics_app = web.Application()
        metrics_app[METRICS] = app[METRICS]
        metrics_app.router.add_get("/metrics", handle_metrics)
        runner = web.AppRunner(metrics_app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                "RECEIVER_METRICS_PORT", f"cannot listen on {host}:{port}: {exc.strerror}"
            ) from None
        log.info("receiver metrics on http://%s:%d/metrics", host, port)
        yield
        await runner.cleanup()

    return serve
