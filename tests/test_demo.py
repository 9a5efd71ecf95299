"""The demo: its seeding (purgeproxy.demo) on the real Medplum engine, purged through a proxy, and
``scripts/demo.sh`` (what ``make run`` runs) end to end with the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from purgeproxy import demo
from tests import seed as seeds
from tests.helpers import TOKEN, purge, texts

ROOT = Path(__file__).resolve().parent.parent


async def test_seeded_patients_purge_cleanly_and_the_shared_data_stays(make_proxy: Any, medplum_base: str) -> None:
    data = demo.build(patients=2, encounters=3)
    counts = data.counts()
    assert counts["Binary"] == counts["DocumentReference"] == 4 and counts["AuditEvent"] == 1
    assert counts["Group"] == counts["Coverage"] == 1 and len(data.patients) == 2
    assert len(demo.build(patients=1).resources) > 250  # the default record: several hundred
    demo.write(medplum_base, data.resources)
    keys = [(r["resourceType"], r["id"]) for r in data.resources]
    assert seeds.present(medplum_base, keys) == keys

    first = data.patients[0]
    mine = [k for k in keys if k == ("Patient", first) or k[1].startswith(f"{first}-")]
    others = [k for k in keys if k not in mine]
    assert set(data.shared + data.protected) <= set(others)
    before = seeds.snapshot(medplum_base, others)

    proxy = await make_proxy(medplum_base, auth={"admin_token": TOKEN})
    status, outcome = await purge(proxy, first, query="?confirm=true")
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    assert f"kept (shared): Group/{data.shared[0][1]}" in texts(outcome)
    assert seeds.present(medplum_base, mine) == []  # the documents' Binaries too
    assert seeds.snapshot(medplum_base, others) == before


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_make_run_demo_script(medplum_base: str, tmp_path: Path) -> None:
    """scripts/demo.sh on its own ports: seeds, dry-runs and purges with the CLI, then stops.
    (``medplum_base`` only makes sure Medplum's engine is installed.)"""
    env = {**os.environ, "DEMO_KEEP_RUNNING": "0", "DEMO_PATIENTS": "2", "DEMO_DIR": str(tmp_path),
           "UPSTREAM_PORT": str(free_port()), "PROXY_PORT": str(free_port())}
    for name in ("PURGEPROXY_URL", "PURGEPROXY_TOKEN", "PURGEPROXY_ADMIN_TOKEN"):
        env.pop(name, None)
    run = subprocess.run([str(ROOT / "scripts/demo.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "1 of 1 patient(s) answered" in out and "2 of 2 patient(s) answered" in out
    assert "kept (shared): Coverage/" in out and "kept (excluded type AuditEvent)" in out
    assert "2 of 2 patient(s) ended success" in out
    assert "-p1 -> HTTP 404" in out or "-p1 -> HTTP 410" in out  # the first patient is gone
    assert "-household -> HTTP 200" in out and "-family-plan -> HTTP 200" in out and "-audit -> HTTP 200" in out
    assert "\x1b[" not in out  # piped: plain text
