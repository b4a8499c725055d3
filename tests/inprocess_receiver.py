"""The real receiver app in this process, driven from synchronous code (hypothesis tests).

It runs on an event loop of its own, behind aiohttp's test server on a real local port,
writing to a real Redis database kept for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import redis
from aiohttp.test_utils import TestClient, TestServer

from casefetch.constants import INGEST_QUEUE
from receiver import create_app
from tests import receiver_helpers as rh


class InProcessReceiver:
    def __init__(self, redis_url: str, database: int, **overrides: object) -> None:
        url = redis_url.rsplit("/", 1)[0] + f"/{database}"
        self.queue = redis.Redis.from_url(url)
        self.queue.delete(INGEST_QUEUE)
        self.loop = asyncio.new_event_loop()
        app = create_app(rh.settings(url, **overrides))
        self.client: TestClient[Any, Any] = TestClient(TestServer(app), loop=self.loop)
        self.loop.run_until_complete(self.client.start_server())

    async def apost(self, body: bytes, headers: Mapping[str, str]) -> int:
        response = await self.client.post(
            "/webhooks", data=body, headers=dict(headers), skip_auto_headers={"Content-Type"}
        )
        await response.read()
        return response.status

    def post(self, body: bytes, headers: Mapping[str, str]) -> int:
        return self.loop.run_until_complete(self.apost(body, headers))

    def queued(self) -> int:
        return int(self.queue.llen(INGEST_QUEUE))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()
        self.queue.delete(INGEST_QUEUE)
        self.queue.close()
