"""The worker's settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from casefetch import config
from casefetch.errors import ConfigError
from casefetch.redis_target import DEFAULT_TARGET, RedisTarget
from worker import archive
from worker.urls import InvalidUrl, ascii_host


@dataclass(frozen=True)
class DownloadSettings:
    max_bytes: int = 1024 * 1024 * 1024
    timeout_seconds: float = 60.0
    #: The longest one try at one file may take, first byte to last (timeout_seconds bounds
    #: only each wait for bytes); over it the try fails and is retried like a timeout.
    attempt_timeout_seconds: float = 1800.0
    max_attempts: int = 5
    #: First backoff delay; doubles each attempt, with full jitter, capped by backoff_max.
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    allowed_hosts: tuple[str, ...] = ()
    allow_private_networks: bool = False
    #: Host names that may resolve to non-public addresses even so (a demo's file host).
    private_hosts: tuple[str, ...] = ()
    #: Sent only over https, and only to allowed_hosts (without them, to no host).
    extra_headers: dict[str, str] = field(default_factory=dict)
    max_redirects: int = 5


@dataclass(frozen=True)
class WorkerSettings:
    redis: RedisTarget = DEFAULT_TARGET
    storage_backend: str = "local"
    archive_dir: Path = Path("archive")
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    download: DownloadSettings = field(default_factory=DownloadSettings)
    #: The catalog (worker.catalog) of the cases, for listing and searching them quickly.
    #: A local file whatever the backend; by default in the local archive's root.
    index_path: Path | None = None
    #: Seconds before kombu hands an unacknowledged message to another worker; bounds how long
    #: work held by a dead worker waits (the contract promises under two minutes).
    visibility_timeout_seconds: int = 60
    #: Seconds between sweeps that finish cases whose messages were lost.
    sweep_interval_seconds: float = 15.0
    #: A pending case with no progress for this long is considered stuck by the sweep.
    stuck_after_seconds: float = 90.0
    #: A temporary object (a .part file, a multipart upload) whose writer has no heartbeat
    #: is removed by the sweep once it is this old.
    stale_temp_after_seconds: float = 600.0
    #: Port of the worker's Prometheus /metrics (0: not served).
    metrics_port: int = 9808
    #: Replicas that must acknowledge a file's claim and its intent (Redis WAIT) before it is
    #: fetched or put in place, so that a failover cannot lose them (REDIS_MIN_REPLICAS_ACK,
    #: as for the receiver; 0: none asked, no WAIT).
    min_replicas_ack: int = 0

    @property
    def catalog_path(self) -> Path:
        return self.index_path or self.archive_dir / archive.CATALOG

    @classmethod
    def from_env(cls, env: config.Env | None = None) -> WorkerSettings:
        env = config.environ() if env is None else env
        backend = config.read_str(env, "STORAGE_BACKEND", cls.storage_backend).lower()
        if backend not in {"local", "s3"}:
            raise ConfigError("STORAGE_BACKEND", f"expected local or s3, got {backend!r}")
        bucket = config.read(env, "S3_BUCKET")
        if backend == "s3" and not bucket:
            raise ConfigError("S3_BUCKET", "required when STORAGE_BACKEND=s3")
        d = DownloadSettings
        download = DownloadSettings(
            max_bytes=config.read_int(env, "DOWNLOAD_MAX_BYTES", d.max_bytes, 1),
            timeout_seconds=config.read_float(
                env, "DOWNLOAD_TIMEOUT_SECONDS", d.timeout_seconds, 0.001
            ),
            attempt_timeout_seconds=config.read_float(
                env, "DOWNLOAD_ATTEMPT_TIMEOUT_SECONDS", d.attempt_timeout_seconds, 0.001
            ),
            max_attempts=config.read_int(env, "DOWNLOAD_MAX_ATTEMPTS", d.max_attempts, 1),
            backoff_base_seconds=config.read_float(
                env, "DOWNLOAD_BACKOFF_BASE_SECONDS", d.backoff_base_seconds
            ),
            backoff_max_seconds=config.read_float(
                env, "DOWNLOAD_BACKOFF_MAX_SECONDS", d.backoff_max_seconds
            ),
            allowed_hosts=read_hosts(env, "DOWNLOAD_ALLOWED_HOSTS"),
            allow_private_networks=config.read_bool(
                env, "DOWNLOAD_ALLOW_PRIVATE_NETWORKS", d.allow_private_networks
            ),
            private_hosts=read_hosts(env, "DOWNLOAD_PRIVATE_HOSTS"),
            extra_headers=config.read_json_object(env, "DOWNLOAD_HEADERS"),
        )
        if download.extra_headers and not download.allowed_hosts:
            raise ConfigError(
                "DOWNLOAD_HEADERS",
                "set DOWNLOAD_ALLOWED_HOSTS too: the extra "
                "headers go only to the hosts named there",
            )
        return cls(
            redis=RedisTarget.from_env(env),
            storage_backend=backend,
            archive_dir=Path(config.read_str(env, "ARCHIVE_DIR", str(cls.archive_dir))),
            s3_bucket=bucket,
            s3_prefix=config.read_str(env, "S3_PREFIX", cls.s3_prefix),
            s3_endpoint_url=config.read(env, "S3_ENDPOINT_URL"),
            download=download,
            index_path=_optional_path(config.read(env, "ARCHIVE_INDEX")),
            visibility_timeout_seconds=config.read_int(
                env, "CELERY_VISIBILITY_TIMEOUT", cls.visibility_timeout_seconds, 5
            ),
            sweep_interval_seconds=config.read_float(
                env, "SWEEP_INTERVAL_SECONDS", cls.sweep_interval_seconds, 0.1
            ),
            stuck_after_seconds=config.read_float(
                env, "SWEEP_STUCK_AFTER_SECONDS", cls.stuck_after_seconds, 0.1
            ),
            metrics_port=config.read_int(env, "WORKER_METRICS_PORT", cls.metrics_port, 0),
            min_replicas_ack=config.read_int(env, "REDIS_MIN_REPLICAS_ACK", cls.min_replicas_ack),
        )


def read_hosts(env: config.Env, name: str) -> tuple[str, ...]:
    """Comma-separated host names, as the guard compares them: lower case, and an
    internationalised name in the IDNA form URLs are requested with (``xn--...``)."""
    hosts = []
    for host in config.read_list(env, name):
        try:
            hosts.append(ascii_host(host))
        except InvalidUrl as exc:
            raise ConfigError(name, f"{host!r} is not a host name: {exc}") from None
    return tuple(hosts)


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None
