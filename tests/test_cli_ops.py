"""``purgeproxy purge`` and ``purgeproxy jobs …`` through a real proxy in front of the Medplum
engine (and ``purge --config`` straight on it): exit statuses, plain text off a terminal, --json.

The CLI runs in-process (``purgeproxy.cli.main``) on a thread, so that the proxy serving it on
this test's event loop keeps answering; stdout is captured, so not a terminal: plain text.
"""

from __future__ import annotations

import asyncio
import json
import sys
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import httpx
import pytest

from purgeproxy.cli import main
from tests import seed as seeds
from tests.helpers import ASYNC, AUTH, TOKEN
from tests.log_capture import events_in


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
async def proxy(make_proxy: Any, medplum_base: str) -> str:
    return await make_proxy(medplum_base, auth={"admin_token": TOKEN, "max_concurrent_per_caller": 1},
                            purge={"batch_size": 20, "max_without_confirm": 50},
                            jobs={"poll_seconds": 0.1, "retry_after_seconds": 1})


def seeded(base: str, count: int) -> list[seeds.Seed]:
    built = [seeds.build(shared=False, sizes={"Encounter": 3, "Observation": 60, "Condition": 10}) for _ in range(count)]
    seeds.write(base, [r for seed in built for r in seed.resources])
    return built


async def test_purge_through_the_proxy(proxy: str, medplum_base: str, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Two patients with a per-caller limit of one: the second waits for a slot. A dry run
    deletes nothing; without --confirm the rail refuses (exit 1); with it both end success."""
    built = seeded(medplum_base, 2)
    patients = [seed.patient for seed in built]
    before = seeds.snapshot(medplum_base, [k for seed in built for k in seed.in_scope + seed.untouchable])
    monkeypatch.setenv("PURGEPROXY_URL", proxy)
    monkeypatch.setenv("PURGEPROXY_TOKEN", TOKEN)

    code, out, _ = await cli(capsys, "purge", "--dry-run", "--poll", "0.1", *patients)
    assert code == 0, out
    assert "\x1b[" not in out  # plain text: no colour, no redrawn bars
    for patient in patients:
        assert f"Patient/{patient}: informational" in out
        assert f"Dry run: 74 resource(s) of Patient/{patient} would be deleted" in out
    assert "2 of 2 patient(s) answered" in out
    assert f"Patient/{patients[1]}: waiting for a free slot (429)" in out  # one job at a time for this caller
    assert seeds.snapshot(medplum_base, list(before)) == before

    code, out, _ = await cli(capsys, "purge", "--json", *patients)
    assert code == 1
    document = json.loads(out)
    assert document["ok"] is False
    assert [(r["patient"], r["status"], r["ok"]) for r in document["results"]] == [(p, 422, False) for p in patients]
    assert seeds.snapshot(medplum_base, list(before)) == before

    code, out, _ = await cli(capsys, "purge", "--confirm", "--poll", "0.1", *patients)
    assert code == 0, out
    for patient in patients:
        assert f"Patient/{patient}: purged" in out  # the job's progress, line by line
        assert f"Patient/{patient}: success" in out
    assert "2 of 2 patient(s) ended success" in out
    assert seeds.present(medplum_base, [k for seed in built for k in seed.in_scope]) == []
    after = seeds.snapshot(medplum_base, [k for seed in built for k in seed.untouchable])
    assert after == {k: before[k] for k in after}


async def test_purge_usage_mistakes_and_refusals(proxy: str, capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("# patients\nnot a valid id!\n")
    code, _, err = await cli(capsys, "purge", "--proxy", proxy, "--token", TOKEN, "--from-file", str(ids))
    assert code == 2 and "not a FHIR id" in err
    code, _, err = await cli(capsys, "purge", "--proxy", proxy, "--token", TOKEN)
    assert code == 2 and "no patient given" in err
    code, _, err = await cli(capsys, "purge", "--proxy", proxy, "--token", "wrong", "x1")
    assert code == 2 and "403" in err and "wrong" not in err
    code, _, err = await cli(capsys, "purge", "--proxy", "http://127.0.0.1:9/fhir", "--token", TOKEN, "x1")
    assert code == 2 and "cannot reach the proxy" in err


async def command(*argv: str) -> tuple[int, str, str]:
    """The CLI as its own process: ``purge --config`` configures logging for the whole process."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "purgeproxy", *argv,
                                                   stdout=PIPE, stderr=PIPE)
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_purge_from_file_with_config_runs_the_engine_directly(
        medplum_base: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--config: no proxy at all, the engine on the upstream the file names; same verdicts."""
    built = seeded(medplum_base, 1)[0]
    control = seeds.snapshot(medplum_base, built.untouchable)
    config = tmp_path / "purgeproxy.yaml"
    config.write_text(f"upstream:\n  url: {medplum_base}\njobs:\n  store: {tmp_path}/jobs.sqlite3\n")
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{built.patient}  # the one to purge\n\n")

    code, out, err = await command("purge", "--config", str(config), "--from-file", str(ids), "--json")
    assert code == 0, out + err
    audit = [event for event in events_in(err) if event["event"] == "audit"]  # JSON on stderr
    assert audit and all(event["caller"].startswith("cli:") for event in audit)
    result = json.loads(out)["results"][0]
    assert (result["patient"], result["verdict"], result["ok"]) == (built.patient, "success", True)
    assert result["outcome"]["issue"][0]["diagnostics"].startswith(f"All resources for Patient/{built.patient}")
    assert seeds.present(medplum_base, built.in_scope) == []
    assert seeds.snapshot(medplum_base, built.untouchable) == control

    read_only = tmp_path / "read-only.yaml"
    read_only.write_text(config.read_text() + "safety:\n  read_only: true\n")
    code, _, err = await command("purge", "--config", str(read_only), built.control)
    assert code == 2 and "read-only" in err
    assert seeds.snapshot(medplum_base, built.untouchable) == control


async def test_jobs_list_show_watch_cancel(make_proxy: Any, medplum_base: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A proxy whose workers run, and a second one on the same store that runs none, so that a
    job queued there stays queued until cancelled."""
    from tests.helpers import config_for

    store = config_for(medplum_base).jobs.store
    proxy = await make_proxy(medplum_base, auth={"admin_token": TOKEN}, jobs={"store": store, "workers": 0})
    built = seeded(medplum_base, 1)[0]
    target = ("--proxy", proxy, "--token", TOKEN)
    async with httpx.AsyncClient(timeout=60) as http:
        queued = await http.post(f"{proxy}/Patient/{built.patient}/$purge?dryRun=true", headers=ASYNC)
    queued_id = queued.headers["Content-Location"].rsplit("/", 1)[1]

    code, out, _ = await cli(capsys, "jobs", "show", queued_id, *target)
    assert code == 1 and f"job {queued_id}: queued" in out  # not ended yet
    code, out, _ = await cli(capsys, "jobs", "list", *target)
    assert code == 0 and "1 job(s)" in out and queued_id in out and "new" in out
    assert out.splitlines()[1].split()[:3] == ["id", "status", "operation"]  # a plain table
    code, out, _ = await cli(capsys, "jobs", "cancel", queued_id, *target)
    assert code == 0 and "cancelled" in out
    code, out, _ = await cli(capsys, "jobs", "cancel", queued_id, *target, "--json")
    assert code == 1 and json.loads(out)["status"] == 404  # a cancelled job is gone for $async
    code, out, _ = await cli(capsys, "jobs", "show", queued_id, *target)
    assert code == 1 and f"job {queued_id}: ended not-found (HTTP 404)" in out and "was cancelled" in out

    runner = await make_proxy(medplum_base, auth={"admin_token": TOKEN},
                              jobs={"store": store, "poll_seconds": 0.1, "retry_after_seconds": 1})
    async with httpx.AsyncClient(timeout=60) as http:
        started = await http.post(f"{runner}/Patient/{built.patient}/$purge", headers=ASYNC)
    job_id = started.headers["Content-Location"].rsplit("/", 1)[1]
    code, out, _ = await cli(capsys, "jobs", "watch", job_id, "--poll", "0.1", "--proxy", runner, "--token", TOKEN)
    assert code == 0, out
    assert f"job {job_id}: ended success (HTTP 200)" in out and "Observation: 60 deleted" in out
    code, out, _ = await cli(capsys, "jobs", "show", job_id, "--json", *target)
    shown = json.loads(out)
    assert code == 0 and shown["active"] is False and shown["outcome"]["issue"][0]["code"] == "success"

    code, out, _ = await cli(capsys, "jobs", "list", "--json", "--status", "completed", *target)
    assert code == 0
    assert [(job["id"], job["status"], job["resultCode"]) for job in json.loads(out)["jobs"]] == \
        [(job_id, "completed", "success")]
    code, out, _ = await cli(capsys, "jobs", "list", "--json", "--limit", "1", *target)
    assert len(json.loads(out)["jobs"]) == 1
    code, _, err = await cli(capsys, "jobs", "list", "--proxy", proxy, "--token", "nope")
    assert code == 2 and "403" in err
    async with httpx.AsyncClient(timeout=60) as http:  # nothing left behind on the upstream
        assert (await http.get(f"{medplum_base}/Patient/{built.patient}", headers=AUTH)).status_code in (404, 410)


async def test_on_a_terminal_bars_and_a_table(proxy: str, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """rich's bars (one per patient and one overall) and a boxed table when stdout is a terminal
    (``TTY_COMPATIBLE=1`` tells rich so); a dry run of patients that do not exist still answers."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    code, out, _ = await cli(capsys, "purge", "--dry-run", "--poll", "0.1", "--proxy", proxy, "--token", TOKEN,
                             "nobody-1", "nobody-2")
    assert code == 0, out
    assert "\x1b[" in out and "overall" in out and "patients done" in out
    assert "┃" in out and "Patient/nobody-1" in out and "2 of 2 patient(s) answered" in out
