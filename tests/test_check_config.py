"""``purgeproxy check-config``: every mistake at once, one line each in plain words, exit 2;
warnings for secrets written in the file and for settings that weaken safety."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from purgeproxy.cli import main

UPSTREAM = {"upstream": {"url": "http://upstream.test/fhir"}}

# (name, a fragment laid over UPSTREAM, the line check-config must print for it)
MISTAKES: list[tuple[str, dict[str, Any], str]] = [
    ("store-scheme", {"jobs": {"store": "mysql://db/x"}},
     "jobs.store: unknown scheme mysql: give an SQLite file path or a postgresql:// URL"),
    ("upstream-scheme", {"upstream": {"url": "ftp://hapi/fhir"}},
     "upstream.url: must be an http(s) URL without query or fragment (got 'ftp://hapi/fhir')"),
    ("jwks-scheme", {"auth": {"jwt": {"issuer": "i", "audience": "a", "jwks_url": "file:///etc/keys"}}},
     "auth.jwt.jwks_url: must be an http:// or https:// URL (got 'file:///etc/keys')"),
    ("public-url-scheme", {"server": {"public_url": "fhir.example.org/fhir"}},
     "server.public_url: must be an http(s) URL without query or fragment (got 'fhir.example.org/fhir')"),
    ("type-name", {"purge": {"excluded_types": ["Auditevent"]}},
     "purge.excluded_types: 'Auditevent' is not a FHIR resource type (R4, R4B or R5); did you mean 'AuditEvent'?"),
    ("unknown-key", {"server": {"prot": 80}}, "server.prot: unknown key"),
    ("not-a-number", {"server": {"port": "eighty"}}, "server.port: must be a whole number (got 'eighty')"),
    ("out-of-range", {"jobs": {"workers": 99}}, "jobs.workers: must be at most 64 (got 99)"),
    ("choice", {"logging": {"level": "loud"}},
     "logging.level: must be one of 'debug', 'info', 'warning' or 'error' (got 'loud')"),
    ("literal-secret-source", {"upstream": {"auth": {"type": "bearer", "token": "abc123"}}},
     "upstream.auth.token: must be {env: VAR} or {file: PATH}, never the secret itself"),
    ("secret-env-unset", {"auth": {"introspection": {"url": "https://a/i", "client_id": "p",
                                                      "client_secret": {"env": "SURELY_UNSET_SECRET"}}}},
     "auth.introspection.client_secret: environment variable SURELY_UNSET_SECRET is not set"),
    ("reference-unset", {"auth": {"admin_token": "${SURELY_UNSET_TOKEN}"}},
     "auth.admin_token: environment variable SURELY_UNSET_TOKEN is not set"),
    ("ca-missing", {"upstream": {"tls": {"ca_file": "/nonexistent/ca.pem"}}},
     "upstream.tls.ca_file: file /nonexistent/ca.pem does not exist (got '/nonexistent/ca.pem')"),
    ("network", {"server": {"trusted_proxies": ["10.0.0.0/33"]}},
     "server.trusted_proxies.0: must be an IP network such as 10.0.0.0/8 (got '10.0.0.0/33')"),
    ("kind", {"upstream": {"kind": "oracle"}},
     "upstream.kind: must be one of 'auto', 'firely', 'google', 'hapi', 'linuxforhealth', 'medplum', "
     "'microsoft' or 'generic' (got 'oracle')"),
    ("boolean", {"safety": {"read_only": "sometimes"}}, "safety.read_only: must be true or false (got 'sometimes')"),
]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and key in merged else value
    return merged


def _check(tmp_path: Path, document: dict[str, Any], capsys: pytest.CaptureFixture[str],
           *args: str) -> tuple[int, list[str]]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    status = main(["check-config", str(path), *args])
    return status, capsys.readouterr().out.splitlines()


@pytest.mark.parametrize(("fragment", "line"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_each_mistake_is_one_plain_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        fragment: dict[str, Any], line: str) -> None:
    status, out = _check(tmp_path, _merge(UPSTREAM, fragment), capsys)
    assert status == 2
    assert out[0] == f"error: {line}"
    assert out[-1] == "1 error(s): the proxy would not start"


def test_every_mistake_is_reported_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document: dict[str, Any] = dict(UPSTREAM)
    for _, fragment, _ in MISTAKES:
        document = _merge(document, fragment)
    status, out = _check(tmp_path, document, capsys)
    assert status == 2
    errors = [line.removeprefix("error: ") for line in out if line.startswith("error: ")]
    # the JWT's and the introspection's own mistakes are separate keys: every line is there
    assert sorted(errors) == sorted(line for _, _, line in MISTAKES)
    assert out[-1] == f"{len(MISTAKES)} error(s): the proxy would not start"


WARNINGS: list[tuple[str, dict[str, Any], str]] = [
    ("literal-admin-token", {"auth": {"admin_token": "hunter2-in-the-file"}},
     "auth.admin_token: a secret is written in the file"),
    ("url-password", {"jobs": {"store": "postgresql://purge:pw@db/purgeproxy"}},
     "jobs.store: the URL holds a password"),
    ("expunge-everything", {"expunge": {"allow_everything": True}}, "expunge.allow_everything:"),
    ("tls-unverified", {"upstream": {"url": "https://upstream.test/fhir", "tls": {"verify": False}}},
     "upstream.tls.verify: the upstream's certificate is not checked"),
    ("allow-all", {"auth": {"insecure_allow_all": True}}, "auth.insecure_allow_all: anyone"),
    ("shared-delete", {"purge": {"shared": "delete"}}, "purge.shared:"),
    ("credentials-in-clear", {"upstream": {"auth": {"type": "basic", "username": "u", "password": {"env": "PATH"}}}},
     "upstream.auth: the proxy's upstream credentials are sent over plain http://"),
    ("trust-everyone", {"server": {"trusted_proxies": ["0.0.0.0/0"]}}, "server.trusted_proxies: every address"),
    ("no-auth", {}, "safety.read_only: false, but no caller is authorized"),
]


@pytest.mark.parametrize(("fragment", "start"), [w[1:] for w in WARNINGS], ids=[w[0] for w in WARNINGS])
def test_warnings_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               fragment: dict[str, Any], start: str) -> None:
    status, out = _check(tmp_path, _merge(UPSTREAM, fragment), capsys)
    assert status == 0
    assert any(line.startswith(f"warning: {start}") for line in out), out
    assert not any("hunter2" in line or ":pw@" in line for line in out)  # a secret is named, never shown
    assert main(["check-config", str(tmp_path / "config.yaml"), "--strict"]) == 1


def test_secrets_from_the_environment_and_a_safe_file_give_no_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_ADMIN", "from-env")
    monkeypatch.setenv("TEST_STORE", "postgresql://u:pw@db/x")
    document = _merge(UPSTREAM, {"auth": {"admin_token": "${TEST_ADMIN}"}, "jobs": {"store": "${TEST_STORE}"},
                                 "upstream": {"url": "https://upstream.test/fhir",
                                              "auth": {"type": "bearer", "token": {"env": "TEST_ADMIN"}}}})
    status, out = _check(tmp_path, document, capsys, "--strict")
    assert (status, out) == (0, ["ok: upstream https://upstream.test/fhir, 0 warning(s)"])


def test_a_literal_secret_is_flagged_even_beside_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = _check(tmp_path, _merge(UPSTREAM, {"auth": {"admin_token": "literal"}, "server": {"port": -1}}), capsys)
    assert status == 2
    assert "error: server.port: must be at least 0 (got -1)" in out
    assert any(line.startswith("warning: auth.admin_token: a secret is written") for line in out)


def test_the_shipped_example_has_no_error(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PURGEPROXY_ADMIN_TOKEN", "x" * 32)
    assert main(["check-config", str(Path(__file__).parent.parent / "config.example.yaml"), "--strict"]) == 0


def test_serve_prints_every_mistake_one_line_each(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstream:\n  url: http://a/fhir\n  retries: 3\njobs:\n  store: mysql://db/x\nserver:\n  port: eighty\n")
    run = subprocess.run([sys.executable, "-m", "purgeproxy", "serve", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "purgeproxy: config error: upstream.retries: unknown key",
        "purgeproxy: config error: server.port: must be a whole number (got 'eighty')",
        "purgeproxy: config error: jobs.store: unknown scheme mysql: give an SQLite file path or a postgresql:// URL",
    ]
