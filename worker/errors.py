"""Errors of the worker.

WorkerError (casefetch.errors.CasefetchError)
 ├── DownloadError                 one file could not be fetched
 │    ├── RetryableDownloadError   worth another attempt (network, timeout, 408/429/5xx, short body)
 │    └── PermanentDownloadError   never worth another attempt (4xx, wrong type, too large, refused)
 └── StorageError                  the archive could not be read or written
      ├── NotFound                 no object under that key
      ├── BucketMissing            the S3 bucket does not exist (retried until it does)
      └── AccessRefused            the store refuses the credentials or the write (retried)
"""

from __future__ import annotations

from redis.exceptions import RedisError

from casefetch.errors import CasefetchError


class WorkerError(CasefetchError):
    pass


class DownloadError(WorkerError):
    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.url = url


class RetryableDownloadError(DownloadError):
    def __init__(self, message: str, url: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, url)
        self.retry_after = retry_after


class PermanentDownloadError(DownloadError):
    pass


class StorageError(WorkerError):
    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class NotFound(StorageError):
    pass


class BucketMissing(StorageError):
    pass


class AccessRefused(StorageError):
    pass


#: Failures of the infrastructure (Redis, the archive): the task is retried until they pass.
INFRA_ERRORS = (RedisError, StorageError, OSError)
