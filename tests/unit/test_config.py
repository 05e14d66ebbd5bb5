"""Settings.from_env: defaults, parsing, `.env` precedence and one-line errors (PROTOCOL.md)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from service.config import DEFAULT_DATABASE_URL, Settings, SettingsError

SECRET = "0123456789abcdef-0123456789abcdef-secret"


def load(env: dict[str, str], dotenv_path: str | Path | None = None) -> Settings:
    return Settings.from_env(env, dotenv_path=dotenv_path)


def env_name(field: str) -> str:
    return f"BUDDYCAST_{field.upper()}"


# ----- defaults -------------------------------------------------------------------------


def test_defaults_match_the_contract() -> None:
    settings = load({})
    assert settings.port == 8080
    assert settings.max_buddies == 1000
    assert settings.offline_grace_s == 5.0
    assert settings.node_ttl_s == 10.0
    assert settings.heartbeat_s == 20.0


def test_defaults_of_every_other_setting() -> None:
    settings = load({})
    assert settings.redis_url is None
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.database_is_sqlite
    assert settings.jwt_secret is None
    assert settings.api_key is None
    assert settings.host == "127.0.0.1"
    assert settings.shards == 16
    assert settings.metrics_port == 9091
    assert settings.max_sessions_per_user == 16
    assert settings.allowed_origins == ()
    assert settings.connect_rate_per_ip == 50.0
    assert settings.slow_client_s == 10.0
    assert settings.stream_maxlen == 200_000
    assert settings.inbox_maxlen == 20_000
    assert settings.max_deliveries == 10
    assert settings.reuse_port is False
    assert settings.log_level == "info"
    assert settings.log_format == "plain"
    assert not settings.redis_is_cluster


def test_node_id_defaults_to_a_unique_non_empty_id() -> None:
    first, second = load({}).node_id, load({}).node_id
    assert first
    assert second
    assert first != second


def test_explicit_environ_ignores_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUDDYCAST_PORT", "1234")
    assert load({}).port == 8080


def test_unrelated_variables_are_ignored() -> None:
    settings = load({"PORT": "not a number", "REDIS_URL": "nonsense", "BUDDYCAST": "x"})
    assert settings.port == 8080
    assert settings.redis_url is None


# ----- every setting parsed -------------------------------------------------------------

VALID: list[tuple[str, str, Any]] = [
    ("redis_url", "redis://10.0.0.1:6380/2", "redis://10.0.0.1:6380/2"),
    ("database_url", "sqlite+aiosqlite:///./data/bc.db", "sqlite+aiosqlite:///./data/bc.db"),
    ("jwt_secret", SECRET, SECRET),
    ("api_key", "k" * 40, "k" * 40),
    ("host", " 0.0.0.0 ", "0.0.0.0"),
    ("port", "9000", 9000),
    ("shards", "64", 64),
    ("max_buddies", "250", 250),
    ("offline_grace_s", "2.5", 2.5),
    ("node_ttl_s", "30", 30.0),
    ("heartbeat_s", "15", 15.0),
    ("node_id", "node-a", "node-a"),
    ("metrics_port", "9100", 9100),
    ("max_sessions_per_user", "4", 4),
    (
        "allowed_origins",
        "https://a.example/, https://b.example",
        ("https://a.example", "https://b.example"),
    ),
    ("connect_rate_per_ip", "7.5", 7.5),
    ("slow_client_s", "3", 3.0),
    ("stream_maxlen", "5000", 5000),
    ("inbox_maxlen", "1000", 1000),
    ("max_deliveries", "3", 3),
    ("claim_idle_s", "2.5", 2.5),
    ("reuse_port", "true", True),
    ("log_level", "DEBUG", "debug"),
    ("log_format", "json", "json"),
]


def test_every_setting_has_a_parse_case() -> None:
    assert {name for name, _, _ in VALID} == {f.name for f in fields(Settings)}


@pytest.mark.parametrize(("field", "raw", "expected"), VALID, ids=[v[0] for v in VALID])
def test_every_setting_is_parsed(field: str, raw: str, expected: Any) -> None:
    value = getattr(load({env_name(field): raw}), field)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "on"])
def test_booleans_true(raw: str) -> None:
    assert load({"BUDDYCAST_REUSE_PORT": raw}).reuse_port is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "no", "off", ""])
def test_booleans_false(raw: str) -> None:
    assert load({"BUDDYCAST_REUSE_PORT": raw}).reuse_port is False


@pytest.mark.parametrize("field", ["redis_url", "jwt_secret", "api_key", "allowed_origins"])
def test_blank_optional_settings_read_as_unset(field: str) -> None:
    settings = load({env_name(field): "  "})
    assert getattr(settings, field) == getattr(Settings(), field)


def test_blank_node_id_gets_the_generated_default() -> None:
    assert load({"BUDDYCAST_NODE_ID": ""}).node_id


def test_range_bounds_are_inclusive() -> None:
    low = load({"BUDDYCAST_PORT": "0", "BUDDYCAST_SHARDS": "1", "BUDDYCAST_OFFLINE_GRACE_S": "0"})
    assert (low.port, low.shards, low.offline_grace_s) == (0, 1, 0.0)
    high = load({"BUDDYCAST_PORT": "65535", "BUDDYCAST_SHARDS": "16384"})
    assert (high.port, high.shards) == (65535, 16384)


# ----- malformed values -----------------------------------------------------------------

MALFORMED: list[tuple[str, str]] = [
    ("redis_url", "http://127.0.0.1:6379"),
    ("redis_url", "redis://"),
    ("redis_url", "127.0.0.1:6379"),
    ("redis_url", "redis+cluster://h1:7000,h2"),
    ("redis_url", "redis+cluster://:7000"),
    ("database_url", "mysql://db/buddycast"),
    ("database_url", ""),
    ("jwt_secret", "short"),
    ("api_key", "fifteen-chars!!"),
    ("host", "   "),
    ("port", "eighty"),
    ("port", ""),
    ("port", "65536"),
    ("port", "-1"),
    ("port", "80.5"),
    ("shards", "0"),
    ("shards", "16385"),
    ("max_buddies", "0"),
    ("max_buddies", "lots"),
    ("offline_grace_s", "-1"),
    ("offline_grace_s", "nan"),
    ("offline_grace_s", "inf"),
    ("offline_grace_s", "5s"),
    ("node_ttl_s", "0"),
    ("heartbeat_s", "0.1"),
    ("metrics_port", "99999"),
    ("max_sessions_per_user", "0"),
    ("connect_rate_per_ip", "0"),
    ("slow_client_s", "x"),
    ("stream_maxlen", "10"),
    ("inbox_maxlen", "1"),
    ("max_deliveries", "0"),
    ("reuse_port", "maybe"),
    ("log_level", "verbose"),
    ("log_format", "xml"),
]


@pytest.mark.parametrize(("field", "raw"), MALFORMED, ids=[f"{f}={r!r}" for f, r in MALFORMED])
def test_malformed_value_raises_one_line_naming_the_variable(field: str, raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        load({env_name(field): raw})
    message = str(info.value)
    assert env_name(field) in message
    assert "\n" not in message


def test_malformed_value_with_a_newline_still_gives_one_line() -> None:
    with pytest.raises(SettingsError) as info:
        load({"BUDDYCAST_PORT": "80\n81"})
    assert "BUDDYCAST_PORT" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("redis_url", "redis://127.0.0.1:notaport/0"),
        ("redis_url", "redis://127.0.0.1:70000/0"),
        ("redis_url", "redis://127.0.0.1:6379/notadb"),
        ("redis_url", "redis+cluster://h1:7000,h2:99999"),
        ("database_url", "postgresql://u@db.example:notaport/buddycast"),
    ],
)
def test_malformed_port_or_db_in_a_url_stops_at_start(field: str, raw: str) -> None:
    # PROTOCOL.md: a malformed setting "stops the process at start with one clear line
    # naming it"; `redis://host:port/db` needs a numeric port and db.
    try:
        load({env_name(field): raw})
    except SettingsError as exc:
        assert env_name(field) in str(exc)
    else:
        pytest.fail(
            f"CONTRACT: {env_name(field)}={raw!r} is malformed but Settings.from_env accepted "
            "it: the client fails later without naming the variable, or ignores the bad part"
        )


# ----- .env -----------------------------------------------------------------------------


def test_dotenv_values_are_read(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# local settings\n"
        f'BUDDYCAST_JWT_SECRET="{SECRET}"\n'
        "BUDDYCAST_PORT=9001\n"
        "BUDDYCAST_REDIS_URL=redis://127.0.0.1:6390/0\n",
        encoding="utf-8",
    )
    settings = load({}, dotenv)
    assert settings.jwt_secret == SECRET
    assert settings.port == 9001
    assert settings.redis_url == "redis://127.0.0.1:6390/0"


def test_environment_wins_over_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("BUDDYCAST_PORT=9001\nBUDDYCAST_HOST=10.1.1.1\n", encoding="utf-8")
    settings = load({"BUDDYCAST_PORT": "9002"}, dotenv)
    assert settings.port == 9002
    assert settings.host == "10.1.1.1"


def test_environment_overrides_a_malformed_dotenv_value(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("BUDDYCAST_PORT=not-a-port\n", encoding="utf-8")
    assert load({"BUDDYCAST_PORT": "9003"}, dotenv).port == 9003


def test_malformed_dotenv_value_names_the_variable(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("BUDDYCAST_SHARDS=many\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="BUDDYCAST_SHARDS"):
        load({}, dotenv)


def test_missing_dotenv_file_is_not_an_error(tmp_path: Path) -> None:
    assert load({}, tmp_path / "absent.env").port == 8080


def test_dotenv_path_none_reads_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("BUDDYCAST_PORT=9004\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert load({}, None).port == 8080
    assert Settings.from_env({}).port == 9004  # the default path is ./.env


def test_dotenv_key_without_value_is_ignored(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("BUDDYCAST_PORT\n", encoding="utf-8")
    assert load({}, dotenv).port == 8080


# ----- require() ------------------------------------------------------------------------


def test_require_names_the_missing_setting() -> None:
    settings = load({"BUDDYCAST_API_KEY": "k" * 20})
    with pytest.raises(SettingsError) as info:
        settings.require("api_key", "jwt_secret")
    assert "BUDDYCAST_JWT_SECRET" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("field", ["redis_url", "jwt_secret", "api_key"])
def test_require_refuses_each_unset_setting(field: str) -> None:
    with pytest.raises(SettingsError, match=env_name(field)):
        load({}).require(field)


def test_require_refuses_a_blank_setting() -> None:
    with pytest.raises(SettingsError, match="BUDDYCAST_JWT_SECRET"):
        load({"BUDDYCAST_JWT_SECRET": ""}).require("jwt_secret")


def test_require_passes_when_everything_is_set() -> None:
    settings = load(
        {
            "BUDDYCAST_REDIS_URL": "redis://127.0.0.1:6379/0",
            "BUDDYCAST_JWT_SECRET": SECRET,
            "BUDDYCAST_API_KEY": SECRET + "-api",
        }
    )
    settings.require("redis_url", "jwt_secret", "api_key")
    settings.require()


# ----- database URL ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("postgres://u:p@db:5432/bc", "postgresql+asyncpg://u:p@db:5432/bc"),
        ("postgresql://u:p@db:5432/bc", "postgresql+asyncpg://u:p@db:5432/bc"),
        ("postgresql+asyncpg://u:p@db/bc", "postgresql+asyncpg://u:p@db/bc"),
        ("postgresql://db/bc?sslmode=require", "postgresql+asyncpg://db/bc?sslmode=require"),
    ],
)
def test_postgres_urls_are_normalized_to_asyncpg(raw: str, expected: str) -> None:
    settings = load({"BUDDYCAST_DATABASE_URL": raw})
    assert settings.database_url == expected
    assert not settings.database_is_sqlite


def test_sqlite_file_url_is_kept() -> None:
    settings = load({"BUDDYCAST_DATABASE_URL": "sqlite+aiosqlite:////var/lib/bc/bc.db"})
    assert settings.database_url == "sqlite+aiosqlite:////var/lib/bc/bc.db"
    assert settings.database_is_sqlite


@pytest.mark.parametrize(
    "raw",
    ["sqlite+aiosqlite:///:memory:", "sqlite+aiosqlite://", "sqlite+aiosqlite:///"],
)
def test_in_memory_sqlite_is_refused(raw: str) -> None:
    with pytest.raises(SettingsError, match="BUDDYCAST_DATABASE_URL") as info:
        load({"BUDDYCAST_DATABASE_URL": raw})
    assert "memory" in str(info.value)


# ----- Redis URL ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://user:pw@redis.example:6380/1",
        "unix:///run/redis.sock",
    ],
)
def test_single_redis_urls(raw: str) -> None:
    settings = load({"BUDDYCAST_REDIS_URL": raw})
    assert settings.redis_url == raw
    assert not settings.redis_is_cluster


@pytest.mark.parametrize(
    "raw",
    [
        "redis+cluster://10.0.0.1:7000",
        "redis+cluster://10.0.0.1:7000,10.0.0.2:7001,redis-3.example:7002",
        "redis+cluster://:secret@10.0.0.1:7000,10.0.0.2:7001",
        "rediss+cluster://user:pw@h1:7000,h2:7000",
    ],
)
def test_cluster_urls_with_seeds(raw: str) -> None:
    settings = load({"BUDDYCAST_REDIS_URL": raw})
    assert settings.redis_url == raw
    assert settings.redis_is_cluster


@pytest.mark.parametrize(
    "raw",
    [
        "redis+cluster://h1",
        "redis+cluster://h1:7000,h2",
        "redis+cluster://h1:7000,,h2:7001",
        "redis+cluster://h1:port",
    ],
)
def test_cluster_url_with_a_bad_seed_is_refused(raw: str) -> None:
    with pytest.raises(SettingsError, match="BUDDYCAST_REDIS_URL"):
        load({"BUDDYCAST_REDIS_URL": raw})
