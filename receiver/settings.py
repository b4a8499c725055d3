"""The receiver's settings, read once from the environment."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from casefetch import config
from casefetch.errors import ConfigError
from casefetch.redis_target import RedisTarget
from receiver.auth import Credentials

#: What every credential in .env.example holds: a value with it is a placeholder nobody
#: replaced, and the receiver will not start with it (case-insensitive).
PLACEHOLDER_MARKER = "change-me"


@dataclass(frozen=True)
class ReceiverSettings:
    redis: RedisTarget
    credentials: Credentials
    max_body_bytes: int = 5 * 1024 * 1024
    #: Longest a request may wait on Redis before it is answered 503.
    redis_timeout_seconds: float = 3.0
    retry_after_seconds: int = 5
    #: Longest a client may take to send a request's headers (from connecting, or from the
    #: previous answer on a kept-alive connection), and again its body: a slow client is cut
    #: off (408 for the body) instead of holding a connection forever.
    read_timeout_seconds: float = 30.0
    #: Port /metrics is served on, apart from the webhooks (same host); None: on the main port.
    metrics_port: int | None = None
    #: Replicas that must have a delivery (Redis WAIT) before it is answered 202; 0: the
    #: primary's own acknowledgement is enough.
    min_replicas_ack: int = 0

    @classmethod
    def from_env(cls, env: config.Env | None = None) -> ReceiverSettings:
        env = config.environ() if env is None else env
        bearer_tokens = config.read_list(env, "WEBHOOK_BEARER_TOKENS")
        hmac_keys = config.read_pairs(env, "WEBHOOK_HMAC_KEYS", config.split_hmac_key)
        basic_users = config.read_pairs(env, "WEBHOOK_BASIC_USERS", config.split_basic_user)
        refuse_placeholders("WEBHOOK_BEARER_TOKENS", ("token",), [(t,) for t in bearer_tokens])
        refuse_placeholders("WEBHOOK_HMAC_KEYS", ("apiKey", "secret"), hmac_keys)
        refuse_placeholders("WEBHOOK_BASIC_USERS", ("user", "password"), basic_users)
        credentials = Credentials.build(bearer_tokens, hmac_keys, basic_users)
        if not credentials.schemes:
            raise ConfigError(
                "WEBHOOK_BEARER_TOKENS",
                "no credential configured: set WEBHOOK_BEARER_TOKENS, WEBHOOK_HMAC_KEYS "
                "or WEBHOOK_BASIC_USERS",
            )
        return cls(
            redis=RedisTarget.from_env(env),
            credentials=credentials,
            max_body_bytes=config.read_int(env, "RECEIVER_MAX_BODY_BYTES", cls.max_body_bytes, 1),
            redis_timeout_seconds=config.read_float(
                env, "RECEIVER_REDIS_TIMEOUT_SECONDS", cls.redis_timeout_seconds
            ),
            read_timeout_seconds=config.read_float(
                env, "RECEIVER_READ_TIMEOUT_SECONDS", cls.read_timeout_seconds, 0.1
            ),
            metrics_port=read_port(env, "RECEIVER_METRICS_PORT"),
            min_replicas_ack=config.read_int(
                env, "REDIS_MIN_REPLICAS_ACK", cls.min_replicas_ack, 0
            ),
        )


def refuse_placeholders(
    variable: str, parts: tuple[str, ...], entries: Iterable[tuple[str, ...]]
) -> None:
    """Raise ConfigError naming ``variable`` and the part (``parts``, one name per field of
    an entry) that holds the placeholder marker; the value itself is never repeated."""
    for entry in entries:
        for part, value in zip(parts, entry, strict=True):
            if PLACEHOLDER_MARKER in value.lower():
                raise ConfigError(
                    variable,
                    f"the {part} is a placeholder (it contains "
                    f"{PLACEHOLDER_MARKER!r}): set a real secret",
                )


def read_port(env: config.Env, name: str) -> int | None:
    port = config.read_int(env, name, 0, 1)
    if port > 65535:
        raise ConfigError(name, f"not a port number: {port}")
    return port or None
