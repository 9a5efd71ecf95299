"""Configuration mistakes stop the proxy with one line naming the key, never a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from purgeproxy.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent


def test_minimal_config_gets_defaults() -> None:
    config = parse_config({"upstream": {"url": "http://hapi:8080/fhir/"}})
    assert config.upstream.url == "http://hapi:8080/fhir"
    assert config.server.base_path == "/fhir"
    assert config.passthrough.rewrite_bundle_types == ["searchset", "history"]


def test_example_config_is_valid_as_shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PURGEPROXY_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("PURGEPROXY_UPSTREAM", raising=False)
    config = load_config(ROOT / "config.example.yaml")
    assert config.auth.admin_token.get_secret_value() == ""
    assert config.upstream.url == "http://127.0.0.1:8080/fhir"


def test_environment_references_are_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PURGEPROXY_ADMIN_TOKEN", "s3cret")
    monkeypatch.setenv("UPSTREAM", "http://up:1/baseR4")
    config = parse_config(
        {"upstream": {"url": "${UPSTREAM}"}, "auth": {"admin_token": "${PURGEPROXY_ADMIN_TOKEN}"}}
    )
    assert config.upstream.url == "http://up:1/baseR4"
    assert config.auth.admin_token.get_secret_value() == "s3cret"


def test_command_line_overrides_win() -> None:
    config = parse_config(
        {"upstream": {"url": "http://a/fhir"}}, {"upstream.url": "http://b/fhir", "server.port": 9}
    )
    assert (config.upstream.url, config.server.port) == ("http://b/fhir", 9)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"upstream": {"url": "http://a/fhir"}, "sevrer": {}}, "sevrer: unknown key"),
        ({"upstream": {"url": "http://a/fhir", "timeout": 3}}, "upstream.timeout: unknown key"),
        ({"upstream": {"url": "http://a/fhir"}, "server": {"port": "eighty"}}, "server.port:"),
        ({"upstream": {"url": "http://a/fhir"}, "server": {"port": 70000}}, "server.port:"),
        ({"upstream": {"url": "ftp://a/fhir"}}, "upstream.url: "),
        ({"upstream": {"url": "http://a/fhir"}, "server": {"base_path": "fhir/"}}, "server.base_path:"),
        ({"server": {"port": 8000}}, "upstream: required key is missing"),
        ({"upstream": {"url": "${SURELY_NOT_SET_ANYWHERE}"}},
         "upstream.url: environment variable SURELY_NOT_SET_ANYWHERE is not set"),
        ([1, 2], "(top level): must be a mapping"),
    ],
    ids=["unknown-section", "unknown-key", "wrong-type", "out-of-range", "bad-url", "bad-path",
         "missing-upstream", "unset-env", "not-a-mapping"],
)
def test_each_class_of_mistake_names_the_key(document: object, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(document)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstream:\n  url: http://a/fhir\n  retries: 3\n")
    run = subprocess.run(
        [sys.executable, "-m", "purgeproxy", "serve", "--config", str(bad)],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == ["purgeproxy: config error: upstream.retries: unknown key"]


def test_cli_reports_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("upstream: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_secret_keys_are_never_echoed_in_config_errors() -> None:
    document = {"upstream": {"url": "http://x/fhir"},
                "auth": {"tokens": [{"name": "t", "sha256": "the-raw-token-by-mistake", "operations": ["$purge"]}]}}
    with pytest.raises(ConfigError) as mistake:
        parse_config(document)
    assert "auth.tokens.0.sha256" in str(mistake.value) and "the-raw-token" not in str(mistake.value)


@pytest.mark.parametrize(("auth", "message"), [
    ({"tokens": [{"name": "t", "operations": ["$purge"]}]}, "exactly one of sha256 or token"),
    ({"tokens": [{"name": "t", "token": {"env": "X", "file": "/y"}, "operations": ["$purge"]}]}, "exactly one of env or file"),
    ({"tokens": [{"name": "t", "sha256": "a" * 64, "operations": ["$destroy"]}]}, "auth.tokens.0.operations.0"),
    ({"jwt": {"issuer": "i", "audience": "a"}}, "give jwks_url or keys"),
    ({"jwt": {"issuer": "i", "audience": "a", "keys": [{}], "algorithms": ["HS256"]}}, "auth.jwt.algorithms.0"),
    ({"scopes": {"$nope": ["x"]}}, "auth.scopes"),
])
def test_auth_policy_mistakes_are_config_errors(auth: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"upstream": {"url": "http://x/fhir"}, "auth": auth})
