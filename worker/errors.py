"""Errors of the worker.

WorkerError (casefetch.errors.CasefetchError)
 ├── Retryable                     the task is tried again later: nothing is lost
 │    ├── Busy                     another worker holds the lock (a case, a folder, a file)
 │    │    └── LockLost            a lock this worker took passed on (it was cut off too long)
 │    └── StorageError             the archive could not be read or written
 │         ├── NotFound            no object under that key (a reader expecting none catches it)
 │         ├── BucketMissing       the S3 bucket does not exist (retried until it does)
 │         └── AccessRefused       the store refuses the credentials or the write (retried)
 ├── Permanent                     trying again cannot help
 │    └── Unarchivable             the payload cannot be archived: it is quarantined
 ├── DownloadError                 one file could not be fetched (its manifest entry says why)
 │    ├── RetryableDownloadError   worth another attempt (network, timeout, 408/429/5xx, short body)
 │    └── PermanentDownloadError   never worth another attempt (4xx, wrong type, too large, refused)
 └── InspectionError               an operator's command cannot do what it was asked
      ├── CaseNotFound, RecordNotFound   (worker.inspection)
      └── CaseBusy                       the case is still being fetched (worker.retry)

NotReplicated (redis.exceptions.RedisError)   fewer replicas than REDIS_MIN_REPLICAS_ACK
                                              acknowledged a write a failover must not lose

A download is retried by the fetcher, attempt after attempt; what is left of it when the
attempts run out is recorded in the file's entry, never raised to the task. Lower-level
errors are translated where they arise (boto3's into StorageError, http.client's into
DownloadError), except Redis's and the local disk's: :data:`INFRA_ERRORS` names them with
StorageError, and the tasks retry them all with backoff.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError

from casefetch.errors import CasefetchError


class WorkerError(CasefetchError):
    pass


class Retryable(WorkerError):
    """The task is tried again later (arq's Retry): nothing is lost meanwhile."""


class Permanent(WorkerError):
    """Trying again cannot help."""


class Busy(Retryable):
    """Another worker holds the lock; try again later."""


class LockLost(Busy):
    """A lock this worker took is no longer its own: it expired while the worker was cut off
    from Redis (or paused), and another worker may hold it now. What it guarded is left to
    that worker."""

    def __init__(self, key: str, fence: int) -> None:
        super().__init__(f"lock {key} (fence {fence}) is no longer held by this worker")
        self.key = key
        self.fence = fence


class StorageError(Retryable):
    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class NotFound(StorageError):
    pass


class BucketMissing(StorageError):
    pass


class AccessRefused(StorageError):
    pass


class Unarchivable(Permanent):
    """The payload cannot be archived; it goes to quarantine with ``reason`` and ``errors``."""

    def __init__(self, reason: str, errors: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errors = errors if errors is not None else {}


class DownloadError(WorkerError):
    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.url = url


class RetryableDownloadError(DownloadError):
    def __init__(
        self, message: str, url: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, url)
        self.retry_after = retry_after


class PermanentDownloadError(DownloadError):
    pass


class NotReplicated(RedisError):
    """A write that must survive a failover reached too few replicas in time. A Redis error,
    so that the tasks retry it like any other Redis failure."""

    def __init__(self, acknowledged: int, wanted: int, reply: Any = None) -> None:
        super().__init__(f"{acknowledged} of {wanted} replica(s) acknowledged the write in time")
        self.acknowledged = acknowledged
        self.wanted = wanted
        #: What the write itself answered: its effects are on the primary.
        self.reply = reply


#: Failures of the infrastructure (Redis, the archive): the task is retried until they pass.
INFRA_ERRORS = (RedisError, StorageError, OSError)
