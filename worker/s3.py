"""The archive in an S3 bucket (AWS, MinIO or any S3-compatible store), through boto3.

Keys are the local archive's keys under ``S3_PREFIX``. A write streams: bytes are gathered
into parts of ``part_size`` and sent as they fill, so memory stays at about two parts whatever
the file's size. An object smaller than one part is sent with a single ``PutObject``; a larger
one is a multipart upload completed only when the writer closes cleanly and aborted otherwise.
Either way S3 shows the object whole or not at all.

Every boto3 failure leaves this module as a StorageError, which the tasks retry with backoff:
a missing bucket (BucketMissing) or refused credentials (AccessRefused) postpone a case, they
never lose it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Collection, Iterable, Iterator
from typing import Any, BinaryIO, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from casefetch import config
from casefetch.errors import ConfigError
from worker.errors import AccessRefused, BucketMissing, NotFound, StorageError
from worker.settings import WorkerSettings
from worker.storage import Staged, Storage, check_key

#: boto3's S3 client; its type is generated at run time, so it is Any to mypy.
S3Client = Any

log = logging.getLogger("casefetch.worker")

#: S3 refuses parts under 5 MiB (all but the last); 8 MiB is boto3's own default chunk size.
MIN_PART_BYTES = 5 * 1024 * 1024
PART_BYTES = 8 * 1024 * 1024

_MISSING_KEY = frozenset({"NoSuchKey", "404", "NotFound"})
_REFUSED = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "403",
        "Forbidden",
        "InvalidObjectState",
    }
)
#: Credentials may come from ``X_FILE`` (Docker secrets); otherwise boto3's standard chain.
_CREDENTIALS = (
    ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
    ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
    ("AWS_SESSION_TOKEN", "aws_session_token"),
)


class S3Storage(Storage):
    def __init__(
        self, client: S3Client, bucket: str, prefix: str = "", part_size: int = PART_BYTES
    ) -> None:
        if part_size < MIN_PART_BYTES:
            raise ValueError(f"part_size must be at least {MIN_PART_BYTES} bytes (S3's minimum)")
        self.client = client
        self.bucket = bucket
        self.prefix = "/".join(p for p in prefix.split("/") if p)
        self.part_size = part_size

    @classmethod
    def from_settings(cls, settings: WorkerSettings, env: config.Env | None = None) -> S3Storage:
        """A storage on a boto3 client; ConfigError when the settings cannot make one."""
        if not settings.s3_bucket:
            raise ConfigError("S3_BUCKET", "required when STORAGE_BACKEND=s3")
        env = config.environ() if env is None else env
        credentials = {param: config.read(env, name) for name, param in _CREDENTIALS}
        explicit = (
            {k: v for k, v in credentials.items() if v}
            if credentials["aws_access_key_id"] and credentials["aws_secret_access_key"]
            else {}
        )
        client_config = Config(
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=10,
            read_timeout=60,
            max_pool_connections=32,
            # MinIO and most S3-compatible stores serve buckets by path, not by sub-domain.
            s3={"addressing_style": "path"} if settings.s3_endpoint_url else None,
        )
        try:
            client = boto3.session.Session().client(
                "s3", endpoint_url=settings.s3_endpoint_url, config=client_config, **explicit
            )
        except (ValueError, BotoCoreError) as exc:
            raise ConfigError("S3_ENDPOINT_URL", f"cannot use it for S3: {exc}") from exc
        return cls(client, settings.s3_bucket, settings.s3_prefix)

    def object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    # -- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def stage(self, key: str, cache: bool = True, owner: str | None = None) -> Iterator[Staged]:
        # Staged: the parts sent so far, and what is left in memory (under one part). The
        # object appears when the upload is completed (commit), whole, or never (discard).
        # ``cache`` is for local disks: nothing here goes through a page cache. ``owner`` is
        # the key without its extension: an upload's own key tells whose it is.
        upload = _Upload(self, key)
        try:
            yield upload
        except BaseException:
            upload.abort()
            raise

    def sync_folders(self, keys: Iterable[str]) -> None:
        """Nothing to do: an object S3 acknowledged is durable, there is no folder."""

    def write_bytes(self, key: str, data: bytes, sync_folder: bool = True) -> None:
        with self.translate("write", key):
            self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data)

    def move(self, source: str, destination: str) -> None:
        with self.translate("read", source):
            self.client.copy_object(
                Bucket=self.bucket,
                Key=self.object_key(destination),
                CopySource={"Bucket": self.bucket, "Key": self.object_key(source)},
            )
        self.delete(source)

    def delete(self, key: str) -> None:
        with self.translate("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    # -- reading ----------------------------------------------------------------------------

    def read_bytes(self, key: str) -> bytes:
        with self.translate("read", key):
            response = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
            with contextlib.closing(response["Body"]) as body:
                data: bytes = body.read()
        return data

    @contextlib.contextmanager
    def open_reader(self, key: str) -> Iterator[BinaryIO]:
        with self.translate("read", key):
            response = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        with contextlib.closing(response["Body"]) as body:
            yield cast(BinaryIO, body)

    def exists(self, key: str) -> bool:
        try:
            with self.translate("read", key):
                self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except NotFound:
            return False
        return True

    def list(self, prefix: str) -> Iterator[str]:
        parts = [p for p in prefix.split("/") if p]
        full = "/".join(([self.prefix] if self.prefix else []) + parts)
        full = f"{full}/" if full else ""
        strip = len(self.prefix) + 1 if self.prefix else 0
        with self.translate("list", prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"][strip:]

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def remove_stale_temp(
        self, older_than_seconds: float, live_owners: Collection[str] = frozenset()
    ) -> int:
        """Abort multipart uploads left by writers that died (their parts cost storage).

        An upload whose key a live owner covers (its writer's heartbeat goes on) is kept,
        however slowly its parts come: a part is sent every ``part_size`` bytes, so by its
        age a download below about 14 KB/s would look dead. Any other upload is aborted once
        neither it nor its last part is younger than the limit.
        """
        ceiling = time.time() - older_than_seconds
        removed = 0
        strip = len(self.prefix) + 1 if self.prefix else 0
        with self.translate("list uploads under", self.prefix or "/"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else ""
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    if (
                        _covered(upload["Key"][strip:], live_owners)
                        or self._last_activity(upload) >= ceiling
                    ):
                        continue
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed += 1
        if removed:
            log.info("aborted %d stale multipart upload(s) in %s", removed, self.describe())
        return removed

    def _last_activity(self, upload: dict[str, Any]) -> float:
        parts = self.client.list_parts(
            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        ).get("Parts", [])
        times = [upload["Initiated"], *(part["LastModified"] for part in parts)]
        return max(float(t.timestamp()) for t in times)

    # -- errors -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def translate(self, action: str, key: str) -> Iterator[None]:
        """Turn boto3's errors into StorageError subclasses that say what to do."""
        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc, action, key) from exc
        except BotoCoreError as exc:
            raise StorageError(
                f"S3 {action} of {key} in bucket {self.bucket} failed: {exc}", key
            ) from exc

    def _client_error(self, exc: ClientError, action: str, key: str) -> StorageError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or "unknown"
        message = error.get("Message") or code
        if code == "NoSuchBucket":
            return BucketMissing(
                f"S3 bucket {self.bucket!r} does not exist (S3_BUCKET); create it and the "
                f"postponed work resumes",
                key,
            )
        if code in _MISSING_KEY and action == "read":
            return NotFound(f"no object {key}", key)
        if code in _REFUSED:
            return AccessRefused(
                f"S3 refused to {action} {key} in bucket {self.bucket!r}: {code}: {message}; "
                f"check the credentials and the bucket policy",
                key,
            )
        return StorageError(
            f"S3 {action} of {key} in bucket {self.bucket!r} failed: {code}: {message}", key
        )


def _covered(key: str, owners: Collection[str]) -> bool:
    """Whether ``key`` is an owner's object: the owner's key itself, or it with an
    extension (``cases/CF-1/items/001-A`` owns ``cases/CF-1/items/001-A.png``)."""
    if key in owners:
        return True
    stem, dot, extension = key.rpartition(".")
    return bool(dot) and "/" not in extension and stem in owners


class _Upload:
    """One object being written: a PutObject if it stays small, else a multipart upload."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self.storage = storage
        self.key = key
        self.object_key = storage.object_key(key)
        #: The part being gathered: what is written is copied in (a caller may reuse a
        #: buffer it handed us), and the part is sent as it is, not joined into a copy:
        #: about two parts in memory, one gathering and one being sent.
        self.pending = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def write(self, data: bytes | memoryview, /) -> int:
        self.pending += data
        if len(self.pending) >= self.storage.part_size:
            self._send_part()
        return len(data)

    def _take(self) -> bytearray:
        data, self.pending = self.pending, bytearray()
        return data

    def _send_part(self) -> None:
        s3 = self.storage
        with s3.translate("write", self.key):
            if self.upload_id is None:
                self.upload_id = s3.client.create_multipart_upload(
                    Bucket=s3.bucket, Key=self.object_key
                )["UploadId"]
            number = len(self.parts) + 1
            answer = s3.client.upload_part(
                Bucket=s3.bucket,
                Key=self.object_key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=self._take(),
            )
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def commit(self, sync_folder: bool = True) -> None:
        try:
            self.finish()
        except BaseException:
            self.abort()
            raise

    def discard(self) -> None:
        self.abort()

    def finish(self) -> None:
        s3 = self.storage
        if self.upload_id is None:
            s3.write_bytes(self.key, bytes(self._take()))
            return
        if self.pending:
            self._send_part()
        with s3.translate("write", self.key):
            s3.client.complete_multipart_upload(
                Bucket=s3.bucket,
                Key=self.object_key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )
        self.upload_id = None

    def abort(self) -> None:
        """Drop the parts sent so far, so nothing of this object ever appears."""
        self.pending = bytearray()
        if self.upload_id is None:
            return
        upload_id, self.upload_id = self.upload_id, None
        try:
            self.storage.client.abort_multipart_upload(
                Bucket=self.storage.bucket, Key=self.object_key, UploadId=upload_id
            )
        except (ClientError, BotoCoreError) as exc:
            # The object still never appears; a bucket lifecycle rule reclaims the parts.
            log.warning("could not abort the upload of %s (%s): %s", self.key, upload_id, exc)
