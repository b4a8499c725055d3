"""Pure units: reading settings as people write them, and printing URLs without passwords."""

from __future__ import annotations

import pytest

from casefetch import config
from casefetch.config import redact_url
from casefetch.errors import ConfigError
from casefetch.redis_target import RedisTarget
from casefetch_tools.sender import auth_headers
from receiver.auth import Credentials, authenticate
from receiver.settings import PLACEHOLDER_MARKER, ReceiverSettings


def receiver_settings(**env: str) -> ReceiverSettings:
    return ReceiverSettings.from_env(env)


@pytest.mark.parametrize(
    "value,pairs",
    [
        ("k:s", (("k", "s"),)),
        (" k : s , k2:s2 ,", (("k", "s"), ("k2", "s2"))),
        # The apiKey may hold ':', as the header parser allows (it splits at the last colon).
        ("tenant:key:secret", (("tenant:key", "secret"),)),
        ("\tk\t:\ts\t", (("k", "s"),)),
    ],
)
def test_hmac_keys_split_at_the_last_colon(value: str, pairs: tuple[tuple[str, str], ...]) -> None:
    assert receiver_settings(WEBHOOK_HMAC_KEYS=value).credentials == Credentials.build(
        hmac_keys=pairs
    )


@pytest.mark.parametrize(
    "value,pairs",
    [
        ("u:p", (("u", "p"),)),
        (" u : p , v:q ", (("u", "p"), ("v", "q"))),
        # A user id cannot hold ':' (RFC 7617); a password may.
        ("platform:p4ss:word", (("platform", "p4ss:word"),)),
    ],
)
def test_basic_users_split_at_the_first_colon(
    value: str, pairs: tuple[tuple[str, str], ...]
) -> None:
    assert receiver_settings(WEBHOOK_BASIC_USERS=value).credentials == Credentials.build(
        basic_users=pairs
    )


def test_bearer_tokens_are_trimmed_alike() -> None:
    assert receiver_settings(WEBHOOK_BEARER_TOKENS=" t1 ,t2,, ").credentials == Credentials.build(
        bearer_tokens=("t1", "t2")
    )


@pytest.mark.parametrize(
    "variable,value",
    [
        ("WEBHOOK_HMAC_KEYS", "no-colon"),
        ("WEBHOOK_HMAC_KEYS", "key: "),
        ("WEBHOOK_HMAC_KEYS", " :secret"),
        ("WEBHOOK_BASIC_USERS", "user"),
        ("WEBHOOK_BASIC_USERS", ":password"),
    ],
)
def test_malformed_pairs_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}: expected comma-separated"):
        receiver_settings(**{variable: value})


def test_a_key_with_a_colon_signs_and_verifies_alike() -> None:
    """``casefetch send --hmac`` and the demo take a pair apart as the receiver does."""
    settings = receiver_settings(WEBHOOK_HMAC_KEYS="tenant:key : secret")
    headers = auth_headers(b"{}", hmac_pair="tenant:key : secret")
    assert headers["X-Api-Key"] == "tenant:key"
    authenticate(headers["Authorization"], headers["X-Api-Key"], b"{}", settings.credentials)
    basic = auth_headers(b"{}", basic="platform : p4ss:word")
    authenticate(
        basic["Authorization"],
        None,
        b"{}",
        receiver_settings(WEBHOOK_BASIC_USERS="platform:p4ss:word").credentials,
    )


@pytest.mark.parametrize(
    "variable,value,part",
    [
        ("WEBHOOK_BEARER_TOKENS", "good-token,change-me-token", "token"),
        ("WEBHOOK_HMAC_KEYS", "change-me-api-key:change-me-api-secret", "apiKey"),
        ("WEBHOOK_HMAC_KEYS", "real-key:Secret-CHANGE-ME", "secret"),
        ("WEBHOOK_BASIC_USERS", "Change-Me:pw", "user"),
        ("WEBHOOK_BASIC_USERS", "platform:please-change-me-now", "password"),
    ],
)
def test_placeholder_credentials_are_refused(variable: str, value: str, part: str) -> None:
    env = {"WEBHOOK_BEARER_TOKENS": "a-real-token", variable: value}
    with pytest.raises(ConfigError) as info:
        ReceiverSettings.from_env(env)
    assert info.value.variable == variable
    assert f"the {part} is a placeholder" in str(info.value)
    assert value.split(",")[-1] not in str(info.value)  # the value itself is not repeated
    assert PLACEHOLDER_MARKER == "change-me"


@pytest.mark.parametrize(
    "url,shown",
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://casefetch:s3:cret@redis/1", "rediss://casefetch:***@redis/1"),
        ("redis://s3cret@redis", "redis://***@redis"),
        ("redis://:s3cret@[::1/0", "redis://:***@[::1/0"),  # does not parse: redacted all the same
        (
            "unix://:s3cret@/run/redis.sock?db=2&password=s3cret",
            "unix://:***@/run/redis.sock?db=2&password=***",
        ),
        (
            "sentinel://:s3cret@s1:26379/2;sentinel://:s3cret@s2:26379/2",
            "sentinel://:***@s1:26379/2;sentinel://:***@s2:26379/2",
        ),
        ("redis://:pa;s3cret@redis/0", "redis://:***@redis/0"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "http://:s3cret@redis:6379/0",
        "redis://:s3cret@redis:port/0",
        "redis://:s3cret@redis:99999/0",
        "sentinel://:s3cret@s1:26379/0;sentinel://s2:port",
        "sentinel://:s3cret@s1:26379/0;redis://s2:6379",
    ],
)
def test_a_bad_redis_url_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^REDIS_URL: ") as info:
        config.redis_url({"REDIS_URL": url})
    assert "s3cret" not in str(info.value) and ":***@" in str(info.value)


def test_a_sentinel_url_names_every_sentinel_and_the_primary_s_credentials() -> None:
    target = RedisTarget.from_env(
        {
            "REDIS_URL": "sentinel://:pw%3B@s1:26380/3; sentinel://s2;sentinel://[::1]:26381",
            "REDIS_SENTINEL_MASTER": "primary",
            "REDIS_SENTINEL_PASSWORD": "spw",
        }
    )
    assert target.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert (target.master, target.db, target.password) == ("primary", 3, "pw;")
    assert target.sentinel_password == "spw"
    assert target.transport_options() == {
        "master_name": "primary",
        "sentinel_kwargs": {"password": "spw"},
    }
    assert "pw" not in target.describe().replace("spw", "")


def test_a_plain_url_is_one_server() -> None:
    target = RedisTarget.from_env({"REDIS_URL": "redis://:pw@redis:6379/1"})
    assert not target.uses_sentinel and target.transport_options() == {}
    assert target.describe() == "redis://:***@redis:6379/1"


def test_a_sentinel_url_with_a_named_database_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^REDIS_URL: the database must be a number"):
        RedisTarget.from_env({"REDIS_URL": "sentinel://s1:26379/zero"})


@pytest.mark.parametrize(("value", "acks"), [(None, 0), ("0", 0), ("1", 1), (" 2 ", 2)])
def test_replica_acknowledgements_are_read(value: str | None, acks: int) -> None:
    env = {"WEBHOOK_BEARER_TOKENS": "t"}
    if value is not None:
        env["REDIS_MIN_REPLICAS_ACK"] = value
    assert receiver_settings(**env).min_replicas_ack == acks


@pytest.mark.parametrize("value", ["-1", "one", "1.5"])
def test_a_bad_replica_acknowledgement_count_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^REDIS_MIN_REPLICAS_ACK: "):
        receiver_settings(WEBHOOK_BEARER_TOKENS="t", REDIS_MIN_REPLICAS_ACK=value)
