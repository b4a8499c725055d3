"""The session's Redis databases, emptied before each test so that no test sees what an
earlier one left.

Which database holds what:

- 0: the session's pipeline (the ``worker`` and ``receiver`` fixtures), and the tests that
  drive it. While that worker runs, database 0 is not flushed: kombu keeps its queue
  bindings there (``_kombu.binding.*``; without them the worker consumes nothing more) and
  every ``casefetch*`` key may be the worker's work in flight (a test may end before its
  case settles, and the worker and its sweeper carry on with it). So only keys outside the
  pipeline's names are deleted; tests on database 0 keep apart through ``unique()`` cfRefs
  and their own delivery ids, never through its being empty. Before the worker starts (and
  once it has stopped) database 0 is flushed like the others.
- :data:`KEPT`: databases whose state must outlive a test, each with its reason.
- any other: flushed before every test (the harnesses, own receivers and workers started
  inside a test).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import redis

from casefetch_tools.redis_server import RedisServer

#: Databases no test flushes, and why.
KEPT = {
    # tests/test_s3.py's module-scoped receiver and S3 worker: kombu's bindings are there.
    1: "the S3 stack of tests/test_s3.py",
    # tests/test_security_properties.py's module-scoped harness: its bookkeeping must match
    # its archive, which the module's tests share.
    14: "the harness of tests/test_security_properties.py",
}
PIPELINE_DB = 0
#: Database 0's keys that belong to the live pipeline (see the module docstring).
PIPELINE_PATTERNS = ("_kombu.*", "unacked*", "casefetch*", "celery*", "*pidbox*")


def clean(server: RedisServer, pipeline_running: bool) -> None:
    """Empty every database a test may have written, except :data:`KEPT`; database 0 only
    down to the pipeline's keys while ``pipeline_running``."""
    with redis.Redis.from_url(server.db_url(PIPELINE_DB)) as client:
        keyspace = client.info("keyspace")  # only the databases that hold keys: "db0", "db5"
    for name in keyspace:
        db = int(name.removeprefix("db"))
        if db in KEPT:
            continue
        with redis.Redis.from_url(server.db_url(db)) as client:
            if db == PIPELINE_DB and pipeline_running:
                _delete_strays(client)
            else:
                client.flushdb()


def _delete_strays(client: redis.Redis) -> None:
    strays = [
        key
        for key in client.scan_iter(count=1000)
        if not any(
            fnmatchcase(key.decode(errors="replace"), pattern) for pattern in PIPELINE_PATTERNS
        )
    ]
    if strays:
        client.delete(*strays)
