"""Configuration precedence: defaults < TOML file < CALLQOS_* environment < flags."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from callqos.server.config import SETTINGS, Config, ConfigError, load


def test_embedded_defaults() -> None:
    config = load(env={})
    assert config.listen == "127.0.0.1:50051"
    assert config.storage == "sqlite"
    assert config.database_path == Path("callqos-data/callqos.db")
    assert config.default_provider == "reference"
    assert set(config.providers) == {"reference", "no-qos"}


def test_toml_then_env_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "callqos.toml"
    toml.write_text(
        'listen = "127.0.0.1:6000"\ndata_dir = "/from/toml"\nmax_watchers = 7\nlog_level = "debug"\n'
        '[providers.reference]\nlinks = [{id = "uplink", capacity_bytes_per_second = 42}]\n'
    )
    env = {"CALLQOS_LISTEN": "127.0.0.1:7000", "CALLQOS_MAX_WATCHERS": "9", "CALLQOS_TARGET": "ignored-client-setting"}
    config = load(toml, env=env, flags={"listen": "127.0.0.1:8000", "data_dir": None})
    assert config.listen == "127.0.0.1:8000"  # flag beats env beats TOML
    assert config.max_watchers == 9  # env beats TOML
    assert config.data_dir == Path("/from/toml")  # a flag left unset does not override
    assert config.log_level == "debug"
    assert config.providers == {"reference": {"links": [{"id": "uplink", "capacity_bytes_per_second": 42}]}}


def test_config_file_from_environment(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('storage = "memory"\n')
    assert load(env={"CALLQOS_CONFIG": str(toml)}).storage == "memory"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CALLQOS_STORAGE": "redis"}, "storage"),
        ({"CALLQOS_MAX_WATCHERS": "many"}, "max_watchers"),
        ({"CALLQOS_LISTEN": "nowhere"}, "listen"),
        ({"CALLQOS_DEFAULT_PROVIDER": "ghost"}, "default_provider"),
        ({"CALLQOS_PROVIDER_TIMEOUT_SECONDS": "0"}, "provider_timeout_seconds"),
        ({"CALLQOS_LISTEN": "127.0.0.1:99999"}, "port 99999 is out of range"),
        ({"CALLQOS_METRICS_LISTEN": "127.0.0.1:65536"}, "metrics_listen: port 65536"),
        ({"CALLQOS_MAX_CONCURRENT_STREAMS": "1000"}, r"max_pending_rpcs \(128000\) must be at least"),
        ({"CALLQOS_SHUTDOWN_GRACE_SECONDS": "30"}, "shutdown_timeout_seconds"),
        ({"CALLQOS_MAX_WATCHERS_PER_PRINCIPAL": "0"}, "max_watchers_per_principal"),
        ({"CALLQOS_MAX_LEASE_SECONDS": "0.5"}, r"max_lease_seconds must be 0 \(no maximum\) or between 1 and"),
        ({"CALLQOS_MAX_LEASE_SECONDS": "31622401"}, r"between 1 and 31622400 \(366 days\)"),
        ({"CALLQOS_MAX_LEASE_SECONDS": "-1"}, "max_lease_seconds"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(env=env)


def test_the_lease_maximum_from_the_environment_and_flags() -> None:
    assert load(env={}).max_lease_seconds == 0.0  # no maximum: a call asking no lease has none
    assert load(env={"CALLQOS_MAX_LEASE_SECONDS": "3600"}).max_lease_seconds == 3600.0
    assert load(env={"CALLQOS_MAX_LEASE_SECONDS": "3600"}, flags={"max_lease_seconds": 1.5}).max_lease_seconds == 1.5


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("lisen = 1\n")
    with pytest.raises(ConfigError, match="lisen"):
        load(toml, env={})


def test_config_dataclass_defaults_match_load() -> None:
    assert load(env={}) == Config()


def test_example_config_is_the_embedded_defaults(tmp_path: Path) -> None:
    """The documented example file must stay in step with the code's defaults."""
    from callqos.server.providers.reference import DEFAULT_LINK

    example = Path(__file__).resolve().parents[1] / "config" / "callqos.example.toml"
    config = load(example, env={})
    defaults = Config()
    # Every setting is written out in the file (port_file commented: it has no default value).
    text = example.read_text()
    for name in SETTINGS:
        assert re.search(rf"^#? ?{name} = ", text, re.MULTILINE) or name == "providers", f"{name} missing"
        if name not in ("providers", "port_file"):
            assert getattr(config, name) == getattr(defaults, name), name
    assert set(config.providers) == set(defaults.providers)
    assert config.providers["reference"]["links"] == [DEFAULT_LINK]


def test_every_setting_is_in_the_example_config() -> None:
    """Each setting is documented in the example file, set or commented out."""
    import dataclasses
    import re

    example = (Path(__file__).resolve().parents[1] / "config" / "callqos.example.toml").read_text()
    documented = set(re.findall(r"^#? ?([a-z_]+) =", example, re.MULTILINE))
    documented |= set(re.findall(r"^#? ?\[([a-z_]+)[.\]]", example, re.MULTILINE))
    missing = [f.name for f in dataclasses.fields(Config) if f.name not in documented | {"port_file"}]
    assert not missing, missing


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"listen": "0.0.0.0:1"}, "no authenticator"),
        (
            {
                "listen": "0.0.0.0:1",
                "authenticators": ["jwt"],
                "jwt_issuer": "i",
                "jwt_audience": "a",
                "jwt_jwks_url": "https://idp.example/jwks",
            },
            "TLS is off",
        ),
        ({"authenticators": ["mtls"]}, "tls_client_ca"),
        ({"authenticators": ["header"]}, "trusted peer"),
        ({"authenticators": ["magic"]}, "unknown magic"),
        ({"tls_cert": "a.pem"}, "go together"),
        ({"jwt_algorithms": ["HS256"]}, "HS256 not allowed"),
        ({"jwt_algorithms": ["none"]}, "none not allowed"),
        ({"jwt_leeway_seconds": 3600}, "jwt_leeway_seconds"),
        ({"authenticators": ["jwt"], "jwt_issuer": "i", "jwt_audience": "a"}, "exactly one of"),
        ({"authenticators": ["jwt"], "jwt_issuer": "i", "jwt_audience": "a", "jwt_jwks_url": "http://idp"}, "https"),
        ({"proxy_listen": "127.0.0.1:9", "authenticators": ["header"]}, "unix:PATH"),
        ({"quota_active_calls": -1}, "quota_active_calls"),
    ],
)
def test_security_settings_that_do_not_fit_together(settings: dict[str, object], message: str) -> None:
    flags = {k: (str(v) if isinstance(v, str) else v) for k, v in settings.items()}
    with pytest.raises(ConfigError, match=message):
        load(env={}, flags=flags)


def test_lists_come_from_the_environment_comma_separated() -> None:
    config = load(
        env={
            "CALLQOS_AUTHENTICATORS": "jwt, mtls",
            "CALLQOS_TLS_CERT": "s.pem",
            "CALLQOS_TLS_KEY": "s.key",
            "CALLQOS_TLS_CLIENT_CA": "ca.pem",
            "CALLQOS_JWT_ISSUER": "i",
            "CALLQOS_JWT_AUDIENCE": "a",
            "CALLQOS_JWT_JWKS_URL": "https://idp.example/jwks",
        }
    )
    assert config.authenticators == ["jwt", "mtls"]
    assert config.tls_client_ca == Path("ca.pem")
