"""What docker-compose.yml, the Dockerfile and .env.example must guarantee operators.

Read as YAML (anchors and merge keys resolved); ``docker-compose config`` checks the file
against Compose's own schema when the command is installed (CI installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from casefetch.constants import ALL_QUEUES
from casefetch.errors import ConfigError
from casefetch.redis_target import RedisTarget
from receiver.settings import PLACEHOLDER_MARKER, ReceiverSettings
from tests.paths import ROOT
from worker.settings import DownloadSettings, WorkerSettings

COMPOSE_FILE = ROOT / "docker-compose.yml"
_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${X:-default}`` substitution, enough for this file."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: env.get(m[1]) or (m[2] or ""), value).replace("$$", "$")
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    interpolated: dict[str, Any] = interpolate(loaded, {})
    return interpolated


def workers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if svc.get("command", [None, None])[:2] == ["casefetch", "worker"]
    }


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_redis_is_durable_and_never_evicts(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync always" in command
    assert "--maxmemory-policy noeviction" in command
    [volume] = redis["volumes"]
    name, target = volume.split(":")
    assert target == "/data" and name in compose["volumes"], "a named volume"
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])


def test_receiver_publishes_8080_after_redis_is_healthy(compose: dict[str, Any]) -> None:
    receiver = compose["services"]["receiver"]
    assert receiver["ports"] == ["8080:8080"]
    assert receiver["build"]["context"] == "."
    assert receiver["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(receiver["healthcheck"]["test"])
    env = receiver["environment"]
    for name in ("WEBHOOK_BEARER_TOKENS", "WEBHOOK_HMAC_KEYS", "WEBHOOK_BASIC_USERS"):
        assert name in env and f"{name}_FILE" in env, "credentials from env or secrets"


def test_workers_scale_and_share_the_archive(compose: dict[str, Any]) -> None:
    found = workers(compose)
    assert len(found) >= 2, "validation and downloads scale separately"
    served: list[str] = []
    for name, svc in found.items():
        assert "container_name" not in svc, name
        assert "ports" not in svc, name
        assert "./archive:/archive" in svc["volumes"], name
        assert svc["environment"]["ARCHIVE_DIR"] == "/archive"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "healthcheck" in svc, name
        served += option(svc["command"], "--queues").split(",")
    assert sorted(served) == sorted(ALL_QUEUES), "each queue has exactly one worker service"
    download = [
        svc for svc in found.values() if option(svc["command"], "--queues") == "casefetch.download"
    ]
    assert len(download) == 1, "downloads have a service of their own"


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if svc.get("restart") != "no":
            assert "test" in svc.get("healthcheck", {}), name


def test_profiles_add_minio_and_the_demo(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "flower" in services and "profiles" not in services["flower"]
    assert services["minio"]["profiles"] == ["s3"]
    setup = services["minio-setup"]
    assert setup["profiles"] == ["s3"] and "mc mb" in " ".join(setup["command"])
    assert setup["depends_on"]["minio"]["condition"] == "service_healthy"
    demo = services["demo"]
    assert demo["profiles"] == ["demo"] and demo["command"][:2] == ["casefetch", "demo"]
    assert demo["depends_on"]["receiver"]["condition"] == "service_healthy"
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]
    profiled = {"minio", "minio-setup", "demo", "prometheus", "grafana", "archive-browser"}
    profiled |= {"redis-replica", *SENTINELS}
    for name, svc in services.items():
        if name not in profiled:
            assert "profiles" not in svc, f"{name} belongs to the default stack"


def test_the_ha_profile_adds_a_replica_and_three_sentinels(compose: dict[str, Any]) -> None:
    services = compose["services"]
    primary, replica = services["redis"], services["redis-replica"]
    assert replica["profiles"] == ["ha"] and replica["image"] == primary["image"]
    command = " ".join(replica["command"])
    assert "--replicaof redis 6379" in command
    # It may become the primary: the primary's durability, its own volume.
    for setting in ("--appendonly yes", "--appendfsync always", "--maxmemory-policy noeviction"):
        assert setting in command
    [volume] = replica["volumes"]
    assert volume.split(":")[0] in compose["volumes"] and volume != primary["volumes"][0]
    for name in SENTINELS:
        sentinel = services[name]
        assert sentinel["profiles"] == ["ha"] and sentinel["image"] == primary["image"]
        shell, flag, script, _zero, announced = sentinel["command"]
        assert (shell, flag, announced) == ("sh", "-c", name)
        assert "sentinel monitor mymaster redis 6379 2" in script, "quorum 2 of 3"
        assert "sentinel down-after-milliseconds mymaster 5000" in script
        assert "redis-server" in script and "--sentinel" in script
        assert "ckquorum mymaster" in " ".join(sentinel["healthcheck"]["test"])


def test_the_ha_settings_reach_the_receiver_and_the_workers() -> None:
    # The three lines .env.example says to set for the ha profile, as an operator would.
    example = (ROOT / ".env.example").read_text()
    block = example.split("Set these three lines", 1)[1].split("\n", 1)[1]
    ha_lines = dict(line[2:].split("=", 1) for line in block.splitlines()[:3])
    assert ha_lines["COMPOSE_PROFILES"] == "ha"
    urls = ha_lines["REDIS_URL"].split(";")
    assert [url.split("//")[1] for url in urls] == [f"{name}:26379" for name in SENTINELS]
    loaded = interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), ha_lines)
    for name in ("receiver", *workers(loaded)):
        env = loaded["services"][name]["environment"]
        assert env["REDIS_URL"] == ha_lines["REDIS_URL"], name
        assert env["REDIS_MIN_REPLICAS_ACK"] == "1", name
    sentinels = tuple((name, 26379) for name in SENTINELS)
    receiver_env = {**loaded["services"]["receiver"]["environment"], "WEBHOOK_BEARER_TOKENS": "t"}
    assert ReceiverSettings.from_env(receiver_env).redis.sentinels == sentinels
    for svc in workers(loaded).values():
        target = WorkerSettings.from_env(svc["environment"]).redis
        assert target.sentinels == sentinels and target.master == "mymaster"


def test_the_browse_profile_serves_the_archive_on_loopback_with_credentials(
    compose: dict[str, Any],
) -> None:
    browser = compose["services"]["archive-browser"]
    assert browser["profiles"] == ["browse"]
    assert browser["command"][:3] == ["casefetch", "archive", "serve"]
    assert option(browser["command"], "--host") == "0.0.0.0"
    assert browser["ports"] == ["127.0.0.1:8081:8081"]
    assert "ARCHIVE_SERVE_USERS" in browser["environment"]
    assert any(volume.endswith(":/archive") for volume in browser["volumes"])


def test_s3_mode_is_an_environment_switch(compose: dict[str, Any]) -> None:
    env = {
        "STORAGE_BACKEND": "s3",
        "S3_BUCKET": "casefetch",
        "S3_ENDPOINT_URL": "http://minio:9000",
    }
    loaded = interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), env)
    for svc in workers(loaded).values():
        settings = WorkerSettings.from_env(svc["environment"])
        assert settings.storage_backend == "s3" and settings.s3_bucket == "casefetch"
        assert settings.s3_endpoint_url == "http://minio:9000"


def test_unset_settings_reach_casefetch_as_its_defaults(compose: dict[str, Any]) -> None:
    for svc in workers(compose).values():
        # One deliberate difference: the demo profile's file host is the stack's only
        # private host (casefetch's own default names none).
        assert WorkerSettings.from_env(svc["environment"]) == WorkerSettings(
            redis=RedisTarget("redis://redis:6379/0"),
            archive_dir=Path("/archive"),
            download=DownloadSettings(private_hosts=("demo",)),
        )
    env = {**compose["services"]["receiver"]["environment"], "WEBHOOK_BEARER_TOKENS": "t"}
    settings = ReceiverSettings.from_env(env)
    assert settings.max_body_bytes == 5 * 1024 * 1024 and settings.redis_timeout_seconds == 3


def test_env_example_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    documented = {
        name for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", table) if not name.endswith("_FILE")
    }
    example = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example, re.M))
    assert documented, "the README's settings table"
    assert documented <= listed, f"missing from .env.example: {sorted(documented - listed)}"
    compose_vars = {name for name, _default in _VARIABLE.findall(COMPOSE_FILE.read_text())}
    unlisted = {v for v in compose_vars - listed if not v.endswith("_FILE")}
    assert not unlisted, f"compose variables missing from .env.example: {sorted(unlisted)}"


def test_image_runs_as_a_user_with_the_locked_install() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    # The official image by default, a stand-in where no registry is reachable.
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.\d+-slim", dockerfile, re.M)
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}", dockerfile, re.M)
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in {"root", "0"}
    assert "pip install --require-hashes --no-deps -r requirements.lock" in dockerfile
    assert "pip install --no-deps ." in dockerfile and "pip check" in dockerfile
    healthcheck = dockerfile.split("HEALTHCHECK", 1)[1]
    assert "/healthz" in healthcheck.split("\n\n", 1)[0]
    # Dependencies are installed before the sources are copied: a cached layer.
    assert dockerfile.index("requirements.lock") < dockerfile.index("COPY casefetch")


def test_base_images_can_be_replaced(compose: dict[str, Any]) -> None:
    stand_ins = {"PYTHON_IMAGE": "base/python:x", "REDIS_IMAGE": "base/redis:x"}
    loaded = interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), stand_ins)
    assert loaded["services"]["redis"]["image"] == "base/redis:x"
    assert loaded["services"]["receiver"]["build"]["args"]["PYTHON_IMAGE"] == "base/python:x"
    assert compose["services"]["redis"]["image"] == "redis:7-alpine"
    assert compose["services"]["receiver"]["build"]["args"]["PYTHON_IMAGE"].startswith("python:3.")


def test_lock_pins_every_dependency_with_hashes() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for lock, extras in (
        ("requirements.lock", ["dashboard"]),
        ("requirements-dev.lock", ["dashboard", "test", "dev"]),
    ):
        text = (ROOT / lock).read_text()
        pinned = {
            re.sub(r"[-_.]+", "-", name).lower()
            for name in re.findall(r"^([A-Za-z0-9_.\-]+)==", text, re.M)
        }
        wanted = list(project["dependencies"])
        for extra in extras:
            wanted += project["optional-dependencies"][extra]
        for requirement in wanted:
            name = re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", requirement)[0]).lower()
            assert name in pinned, f"{name} is not pinned in {lock} (make lock)"
        blocks = re.split(r"^(?=[A-Za-z0-9])", text, flags=re.M)
        assert all("--hash=sha256:" in block for block in blocks if "==" in block), lock
    # kombu's Redis transport needs the redis extra (it brings `packaging`).
    assert any(dep.startswith("celery[redis]") for dep in project["dependencies"])


def test_only_loopback_for_dashboards(compose: dict[str, Any]) -> None:
    for name in ("flower", "prometheus", "grafana"):
        for port in compose["services"][name]["ports"]:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port}"
    assert "--enable_events=False" in compose["services"]["flower"]["command"]
    # The published port serves the webhook and health checks; /metrics has its own port.
    receiver = compose["services"]["receiver"]
    assert receiver["environment"]["RECEIVER_METRICS_PORT"] == "9100"
    assert not any("9100" in port for port in receiver["ports"])
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [job] = [j for j in scrape["scrape_configs"] if j["job_name"] == "casefetch-receiver"]
    assert job["dns_sd_configs"][0]["port"] == 9100
    for svc in workers(compose).values():
        assert svc["environment"]["DOWNLOAD_ALLOW_PRIVATE_NETWORKS"] == "false"
        assert svc["environment"]["DOWNLOAD_PRIVATE_HOSTS"] == "demo"


def test_healthchecks_survive_podman() -> None:
    """podman's Docker API splits exec-form healthchecks on spaces, and its exec sessions
    have no $HOSTNAME: every check is a shell command, and none reads $HOSTNAME."""
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    for name, svc in loaded["services"].items():
        test = svc.get("healthcheck", {}).get("test")
        if test is None:
            continue
        assert test[0] == "CMD-SHELL" or all(" " not in arg for arg in test[1:]), name
        assert "HOSTNAME" not in " ".join(test), name


def test_env_example_holds_no_working_credential() -> None:
    example = (ROOT / ".env.example").read_text()
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]+)=(.*)$", example, re.M))
    credentials = {}
    for name in ("WEBHOOK_BEARER_TOKENS", "WEBHOOK_HMAC_KEYS", "WEBHOOK_BASIC_USERS"):
        for part in filter(None, re.split(r"[,:]", values.get(name, ""))):
            assert part.startswith(PLACEHOLDER_MARKER), f"{name} holds a usable value"
        credentials[name] = values.get(name, "")
    # ...and the receiver will not start with them.
    with pytest.raises(ConfigError, match="placeholder"):
        ReceiverSettings.from_env(credentials)


@pytest.mark.parametrize("profile", [None, "s3", "demo", "monitoring", "browse", "ha"])
@pytest.mark.parametrize("env_file", [None, ".env.example"])
def test_docker_compose_accepts_the_file(profile: str | None, env_file: str | None) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (.ci/run installs it)")
    args = [binary, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE)]
    if env_file:
        args += ["--env-file", str(ROOT / env_file)]
    if profile:
        args += ["--profile", profile]
    result = subprocess.run(
        [*args, "config", "-q"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
