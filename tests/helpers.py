"""Constants and plain helpers shared by the test modules (fixtures live in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import atexit
import shutil
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from purgeproxy.config import parse_config

TOKEN = "test-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ASYNC = {**AUTH, "Prefer": "respond-async"}

_JOBS_DIR = tempfile.mkdtemp(prefix="purgeproxy-test-jobs-")
atexit.register(shutil.rmtree, _JOBS_DIR, True)


def config_for(upstream_url: str, **sections: dict[str, Any]) -> Any:
    """A validated config for ``upstream_url``, with ``sections`` merged over the defaults.

    Each config gets a job store of its own, so that no test resumes another test's jobs.
    """
    document: dict[str, Any] = {"upstream": {"url": upstream_url},
                                "jobs": {"store": f"{_JOBS_DIR}/{uuid.uuid4().hex}.sqlite3"}}
    for name, values in sections.items():
        document[name] = {**document.get(name, {}), **values}
    return parse_config(document)


async def purge(proxy: str, patient: str, body: Any = None, query: str = "") -> tuple[int, dict[str, Any]]:
    """A synchronous ``$purge`` of ``patient`` as the operator; the status and the OperationOutcome."""
    async with httpx.AsyncClient(timeout=300) as http:
        answer = await http.post(f"{proxy}/Patient/{patient}/$purge{query}", json=body, headers=AUTH)
    return answer.status_code, answer.json()


async def kick_off(proxy: str, patient: str, query: str = "", headers: dict[str, str] = ASYNC) -> httpx.Response:
    """An asynchronous ``$purge`` kick-off (``Prefer: respond-async`` by default)."""
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(f"{proxy}/Patient/{patient}/$purge{query}", headers=headers)


async def until_done(http: httpx.AsyncClient, url: str, headers: dict[str, str] = AUTH, timeout: float = 120,
                     pause: float = 0.1, each: Callable[[httpx.Response], object] | None = None) -> httpx.Response:
    """GET an asynchronous job's status URL until it stops answering 202; ``each`` sees every 202
    on the way (its progress headers). A job still running after ``timeout`` seconds fails the test."""
    for _ in range(max(1, int(timeout / pause))):
        answer = await http.get(url, headers=headers)
        if answer.status_code != 202:
            return answer
        if each is not None:
            each(answer)
        await asyncio.sleep(pause)
    raise AssertionError(f"{url} still running after {timeout} s")


def texts(outcome: dict[str, Any]) -> str:
    """Every issue's diagnostics of an OperationOutcome, one per line."""
    return "\n".join(issue["diagnostics"] for issue in outcome["issue"])


def assert_kept_referrer_reported(outcome: dict[str, Any], kind: str, patient: str, kept: str) -> None:
    """A kept resource still references the purged Patient: HAPI's referential integrity blocks
    the Patient's delete (incomplete, naming the blocker); elsewhere it goes and the kept one is listed."""
    if kind == "hapi":
        assert outcome["issue"][0]["code"] == "incomplete"
        assert f"Patient/{patient} was not deleted: still referenced by {kept}" in texts(outcome)
    else:
        assert outcome["issue"][0]["code"] == "success", texts(outcome)
        assert f"{kept} is kept and still references Patient/{patient}" in texts(outcome)
