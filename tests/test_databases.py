"""What tests/databases.py empties before each test, and what it keeps."""

from __future__ import annotations

from pathlib import Path

import redis

from casefetch_tools.redis_server import RedisServer
from tests import databases


def test_each_test_starts_on_empty_databases_but_the_live_pipelines(tmp_path: Path) -> None:
    # A server of its own: emptying the session's database 0 would stop the session worker.
    server = RedisServer(tmp_path).start()
    clients = {db: redis.Redis.from_url(server.db_url(db)) for db in (0, 1, 4, 14)}
    try:
        for client in clients.values():
            client.set("left-by-a-test", 1)
        clients[0].set("_kombu.binding.casefetch.ingest", 1)
        clients[0].set("casefetch:inbox", 1)

        databases.clean(server, pipeline_running=True)
        assert sorted(clients[0].keys()) == [b"_kombu.binding.casefetch.ingest", b"casefetch:inbox"]
        assert not clients[4].exists("left-by-a-test")
        assert all(clients[db].exists("left-by-a-test") for db in databases.KEPT)

        databases.clean(server, pipeline_running=False)
        assert clients[0].dbsize() == 0
    finally:
        for client in clients.values():
            client.close()
        server.stop()
