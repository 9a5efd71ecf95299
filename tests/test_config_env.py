"""Configuration from the environment: ``PURGEPROXY_SECTION__KEY`` for every key (``__`` nests, as
in the HAPI starter), ``PURGEPROXY_UPSTREAM`` alone enough to start, and a job store that cannot
be opened stopping ``serve`` with one line instead of a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from purgeproxy.config import ConfigError, load_config, parse_config
from tests.log_capture import events_in
from tests.served import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_the_upstream_alone_is_a_whole_configuration() -> None:
    config = parse_config({}, environ={"PURGEPROXY_UPSTREAM": "http://hapi:8080/fhir/"})
    assert config.upstream.url == "http://hapi:8080/fhir"
    assert config.jobs.store == "purgeproxy-jobs.sqlite3"


def test_every_key_nests_with_double_underscores() -> None:
    config = parse_config({}, environ={
        "PURGEPROXY_UPSTREAM__URL": "https://fhir.example.org/R4",
        "PURGEPROXY_UPSTREAM__TIMEOUTS__READ": "30",
        "PURGEPROXY_SERVER__PORT": "9000",
        "PURGEPROXY_SERVER__TRUSTED_PROXIES": "[10.0.0.0/8, 192.168.0.0/16]",
        "PURGEPROXY_SAFETY__READ_ONLY": "true",
        "PURGEPROXY_JOBS__STORE": "/var/lib/purgeproxy/jobs.sqlite3",
        "PURGEPROXY_AUTH__ADMIN_TOKEN": "from-the-environment",
        "PURGEPROXY_PURGE__EXCLUDED_TYPES": "[AuditEvent, Provenance, Consent]",
        "PURGEPROXY_URL": "http://proxy:8000/fhir",  # the CLI's, not a config key: no __
        "PURGEPROXY_TOKEN": "cli-token",
    })
    assert config.upstream.url == "https://fhir.example.org/R4"
    assert config.upstream.timeouts.read == 30.0
    assert config.server.port == 9000
    assert [str(n) for n in config.server.trusted_proxies] == ["10.0.0.0/8", "192.168.0.0/16"]
    assert config.safety.read_only is True
    assert config.jobs.store == "/var/lib/purgeproxy/jobs.sqlite3"
    assert config.auth.admin_token.get_secret_value() == "from-the-environment"
    assert config.purge.excluded_types == ["AuditEvent", "Provenance", "Consent"]


def test_precedence_file_then_environment_then_flags() -> None:
    document = {"upstream": {"url": "http://file/fhir"}, "server": {"port": 1, "host": "0.0.0.0"}}
    environ = {"PURGEPROXY_SERVER__PORT": "2", "PURGEPROXY_UPSTREAM": "http://shorthand/fhir"}
    config = parse_config(document, {"server.host": "127.0.0.2"}, environ)
    # the shorthand only fills what the file leaves unset; __ keys override the file; flags win
    assert (config.upstream.url, config.server.port, config.server.host) == ("http://file/fhir", 2, "127.0.0.2")
    assert parse_config(document, None, {"PURGEPROXY_UPSTREAM__URL": "http://env/fhir"}).upstream.url == "http://env/fhir"


def test_example_file_reads_its_two_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PURGEPROXY_UPSTREAM", "http://hapi:8080/fhir")
    monkeypatch.setenv("PURGEPROXY_ADMIN_TOKEN", "t" * 32)
    config = load_config(ROOT / "config.example.yaml", None, os.environ)
    assert config.upstream.url == "http://hapi:8080/fhir"
    assert config.auth.admin_token.get_secret_value() == "t" * 32


def test_mistakes_name_the_variable_and_all_are_reported() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({}, environ={"PURGEPROXY_UPSTREAM": "ftp://x/fhir", "PURGEPROXY_SERVER__PORT": "eighty",
                                  "PURGEPROXY_SEVRER__PORT": "1", "PURGEPROXY_JOBS__STORE": "mysql://db/x"})
    assert raised.value.problems == [
        "upstream.url (from PURGEPROXY_UPSTREAM): must be an http(s) URL without query or fragment (got 'ftp://x/fhir')",
        "server.port (from PURGEPROXY_SERVER__PORT): must be a whole number (got 'eighty')",
        "jobs.store (from PURGEPROXY_JOBS__STORE): unknown scheme mysql: give an SQLite file path or a postgresql:// URL",
        "sevrer (from PURGEPROXY_SEVRER__PORT): unknown key",
    ]


def test_a_value_and_a_section_for_one_key_is_a_mistake() -> None:
    with pytest.raises(ConfigError, match=r"upstream: must be a mapping of keys"):
        parse_config({"upstream": "http://x/fhir"}, environ={"PURGEPROXY_UPSTREAM__URL": "http://y/fhir"})


def test_without_any_upstream_the_hint_names_the_variable() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({}, environ={})
    assert raised.value.problems == ["upstream: required key is missing (give upstream.url, or set PURGEPROXY_UPSTREAM)"]


def _serve(environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PURGEPROXY_")}
    env.update({"PURGEPROXY_UPSTREAM": "http://127.0.0.1:9/fhir", "PURGEPROXY_SERVER__PORT": "0", **environ})
    return subprocess.run([sys.executable, "-m", "purgeproxy", "serve"], capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT)


def _said(run: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr less the JSON log lines written before the store was opened."""
    return [line for line in run.stderr.splitlines() if not line.startswith("{")]


def test_a_store_that_cannot_be_written_stops_serve_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run = _serve({"PURGEPROXY_JOBS__STORE": str(blocker / "jobs.sqlite3"), "PURGEPROXY_EXPUNGE__ALLOW_EVERYTHING": "true"})
    assert run.returncode == 2
    logged = events_in(run.stderr)
    assert any(entry["event"] == "config_warning" and entry["detail"].startswith("expunge.allow_everything:")
               for entry in logged)  # serve logs what check-config warns about
    assert "Traceback" not in run.stderr + run.stdout
    assert _said(run) == [
        f"purgeproxy: config error: jobs.store: cannot open {blocker}/jobs.sqlite3 (File exists)"]


def test_several_workers_log_the_config_warnings_once(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run = _serve({"PURGEPROXY_JOBS__STORE": str(blocker / "jobs.sqlite3"), "PURGEPROXY_EXPUNGE__ALLOW_EVERYTHING": "true",
                  "PURGEPROXY_SERVER__PORT": str(free_port()), "PURGEPROXY_SERVER__WORKERS": "2"})
    assert run.returncode == 2
    logged = events_in(run.stderr)
    assert sum(entry["event"] == "starting" for entry in logged) == 2  # both workers ran
    warned = [entry["detail"] for entry in logged if entry["event"] == "config_warning"]
    assert any(detail.startswith("expunge.allow_everything:") for detail in warned)
    assert len(warned) == len(set(warned))  # each once, not once per worker


def test_an_unreachable_postgresql_stops_serve_with_one_line_and_no_password() -> None:
    run = _serve({"PURGEPROXY_JOBS__STORE": "postgresql://purge:s3cret-pw@127.0.0.1:9/purgeproxy"})
    assert run.returncode == 2
    assert "Traceback" not in run.stderr + run.stdout and "s3cret-pw" not in run.stderr + run.stdout
    assert _said(run) == [
        "purgeproxy: config error: jobs.store: cannot open postgresql://purge:***@127.0.0.1:9/purgeproxy "
        "(Connection refused)"]
