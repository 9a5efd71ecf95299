"""The container image's runtime contract, proven without a container engine: ``purgeproxy serve``
started as an unprivileged user, from a working directory it cannot write, configured only through
the environment the Dockerfile sets (its data volume mapped to a directory of the test), serves
and runs an asynchronous purge against the real Medplum engine."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from purgeproxy.config import parse_config
from tests import seed as seeds
from tests.helpers import ASYNC, AUTH, TOKEN, texts

ROOT = Path(__file__).resolve().parent.parent
VOLUME = "/var/lib/purgeproxy"


def _dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def image_environment() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in _dockerfile():
        if line.startswith("ENV "):
            found.update(pair.split("=", 1) for pair in line[4:].split())
    return found


def test_the_image_declares_the_contract() -> None:
    lines = _dockerfile()
    base = next(line for line in lines if line.startswith("FROM "))
    assert base.split()[1].count(".") >= 2, "the base image is pinned to a patch release"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and not users[-1].startswith(("0", "root")), "the image runs as a non-root user"
    assert any(line.startswith("VOLUME ") and VOLUME in line for line in lines)
    assert image_environment()["PURGEPROXY_JOBS__STORE"].startswith(VOLUME + "/")
    dependencies = next(i for i, line in enumerate(lines) if "pip install" in line and "requirements" in line)
    source = next(i for i, line in enumerate(lines) if line.startswith("COPY purgeproxy"))
    assert dependencies < source, "the dependency layer comes before the source"
    assert lines[-1] == 'ENTRYPOINT ["purgeproxy", "serve"]'  # no --config: the environment suffices


def _unprivileged() -> list[str]:
    if os.geteuid() != 0:
        return []  # already not root: run as we are
    if shutil.which("setpriv"):
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"]
    pytest.skip("neither setpriv nor runuser is installed: cannot drop root")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def dirs() -> Iterator[tuple[Path, Path]]:
    """A read-only working directory and the volume's stand-in, owned by the unprivileged user
    (under a directory of its own in /tmp: pytest's tmp_path is closed to other users)."""
    top = Path(tempfile.mkdtemp(prefix="purgeproxy-runtime-"))
    top.chmod(0o755)
    workdir, data = top / "app", top / "var-lib-purgeproxy"
    workdir.mkdir()
    data.mkdir()
    if os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.chown(data, nobody.pw_uid, nobody.pw_gid)
    workdir.chmod(0o555)
    yield workdir, data
    workdir.chmod(0o755)
    shutil.rmtree(top)


def _start(workdir: Path, environ: dict[str, str]) -> subprocess.Popen[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environ}  # nothing else leaks in
    return subprocess.Popen([*_unprivileged(), sys.executable, "-m", "purgeproxy", "serve"], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _image_env(data: Path, upstream: str, port: int) -> dict[str, str]:
    env = {key: value.replace(VOLUME, str(data)) for key, value in image_environment().items()}
    env.update(PURGEPROXY_UPSTREAM=upstream, PURGEPROXY_ADMIN_TOKEN=TOKEN,
               PURGEPROXY_SERVER__HOST="127.0.0.1", PURGEPROXY_SERVER__PORT=str(port),  # loopback, a free port
               PURGEPROXY_JOBS__POLL_SECONDS="0.2", PYTHONPATH=str(ROOT))
    return env


def _wait_healthy(base: str, process: subprocess.Popen[str]) -> None:
    for _ in range(300):
        if process.poll() is not None:
            raise AssertionError(f"serve exited {process.returncode}: {process.communicate()[1][-2000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("serve did not become healthy in 30 s")


def test_unprivileged_read_only_start_serves_and_purges(dirs: tuple[Path, Path], medplum_base: str) -> None:
    workdir, data = dirs
    seed = seeds.build(sizes={"Observation": 20}, shared=False)
    seeds.write(medplum_base, seed.resources)
    before = seeds.snapshot(medplum_base, seed.untouchable)
    port = _free_port()
    process = _start(workdir, _image_env(data, medplum_base, port))
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", process)
        proxy = f"http://127.0.0.1:{port}/fhir"
        with httpx.Client(timeout=60) as http:
            assert http.get(f"{proxy}/Patient/{seed.patient}").json()["id"] == seed.patient  # pass-through
            accepted = http.post(f"{proxy}/Patient/{seed.patient}/$purge", headers=ASYNC)
            assert accepted.status_code == 202, accepted.text
            status_url = accepted.headers["Content-Location"]
            for _ in range(600):
                done = http.get(status_url, headers=AUTH)
                if done.status_code != 202:
                    break
                time.sleep(0.1)
        assert done.status_code == 200, done.text
        outcome = done.json()["entry"][0]["response"]["outcome"]
        assert outcome["issue"][0]["code"] == "success", texts(outcome)
        assert seeds.present(medplum_base, seed.in_scope) == []
        assert seeds.snapshot(medplum_base, seed.untouchable) == before
        stored = data / Path(image_environment()["PURGEPROXY_JOBS__STORE"]).name
        assert stored.is_file() and stored.stat().st_uid == data.stat().st_uid != 0  # written by the unprivileged user
        assert list(workdir.iterdir()) == []  # nothing written where it was started
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_a_store_in_the_read_only_directory_is_one_clear_line(dirs: tuple[Path, Path], medplum_base: str) -> None:
    """The old image's failure (the store under a directory the user cannot write) is now said
    in one line with a non-zero exit, not a traceback."""
    workdir, data = dirs
    env = _image_env(data, medplum_base, _free_port())
    del env["PURGEPROXY_JOBS__STORE"]  # the built-in default: a file in the working directory
    process = _start(workdir, env)
    _, stderr = process.communicate(timeout=60)
    said = [line for line in stderr.splitlines() if not line.startswith("{")]
    assert process.returncode == 2
    assert "Traceback" not in stderr
    assert said == ["purgeproxy: config error: jobs.store: cannot open purgeproxy-jobs.sqlite3 (unable to open database file)"]


def test_the_compose_file_configures_the_proxy_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/compose: the proxy's environment (with the operator's variables filled in) is a
    whole, valid configuration in front of the HAPI service, and HAPI publishes no port."""
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "compose.yaml").read_text(encoding="utf-8"))
    given = {"PURGEPROXY_ADMIN_TOKEN": "t" * 64, "POSTGRES_PASSWORD": "p" * 32}

    def fill(value: str) -> str:
        return re.sub(r"\$\{(\w+)(?::[-?][^}]*)?\}", lambda m: given.get(m.group(1), "http://localhost:8000/fhir"), value)

    environ = {key: fill(str(value)) for key, value in compose["services"]["purgeproxy"]["environment"].items()}
    config = parse_config({}, None, {**image_environment(), **environ})
    assert config.upstream.url == "http://hapi:8080/fhir" and config.upstream.kind == "hapi"
    assert config.auth.admin_token.get_secret_value() == "t" * 64
    assert config.jobs.store.startswith(VOLUME + "/")
    assert "/var/lib/purgeproxy" in " ".join(compose["services"]["purgeproxy"]["volumes"])
    assert "ports" not in compose["services"]["hapi"]
