"""Names both sides of the queue must agree on: queues, task names, Redis keys."""

from __future__ import annotations

#: Validation of a received payload (cheap, CPU-bound).
INGEST_QUEUE = "casefetch.ingest"
#: One file download (slow, I/O-bound).
DOWNLOAD_QUEUE = "casefetch.download"
ALL_QUEUES = (INGEST_QUEUE, DOWNLOAD_QUEUE)

INGEST_TASK = "casefetch.ingest"
DOWNLOAD_TASK = "casefetch.download"

#: Every bookkeeping key lives under this prefix, so one Redis can be shared.
KEY_PREFIX = "casefetch"

#: Headers that carry credentials: never stored, never logged.
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "proxy-authorization", "cookie"})


def case_key(case_dir: str, part: str) -> str:
    """Redis key for one piece of a case's bookkeeping (``gen``, ``pending``, ``results``)."""
    return f"{KEY_PREFIX}:case:{case_dir}:{part}"


def lock_key(*parts: str) -> str:
    return f"{KEY_PREFIX}:lock:" + ":".join(parts)


#: The counter every lock acquisition takes its fence number from (worker.locks).
FENCE_KEY = f"{KEY_PREFIX}:fence"


#: Sorted set of cases with work outstanding, scored by the time of their last progress.
ACTIVE_CASES_KEY = f"{KEY_PREFIX}:active"

#: Every accepted delivery until a worker has archived or quarantined it: hash deliveryId →
#: the queued message, and its index, scored by the time it was (last) queued. The queue
#: alone is not enough: a message a worker popped is lost if Redis dies before kombu records
#: it as unacknowledged. The sweep queues again what stays here too long.
INBOX_KEY = f"{KEY_PREFIX}:inbox"
INBOX_INDEX_KEY = f"{KEY_PREFIX}:inbox:index"

#: Held by the one worker whose sweep runs this interval (the others skip it).
SWEEP_LOCK_KEY = f"{KEY_PREFIX}:sweep"
