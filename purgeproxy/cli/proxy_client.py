"""Talking to a running proxy from the command line: the options every such command takes, and the
few FHIR calls they make (an asynchronous ``$purge``, its status URL, the job list).

Only the proxy's public HTTP API is used, so the commands work against any replica, local or not;
the token goes in the ``Authorization`` header and nowhere else (never printed, never logged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import typer

URL_ENV = "PURGEPROXY_URL"
TOKEN_ENV = "PURGEPROXY_TOKEN"
UNREACHABLE = 2  # exit status when the proxy cannot be asked at all (as for usage mistakes)

ProxyOption = Annotated[str | None, typer.Option(
    "--proxy", envvar=URL_ENV, show_envvar=True,
    help="the proxy's FHIR base URL, e.g. http://127.0.0.1:8000/fhir")]
TokenOption = Annotated[str | None, typer.Option(
    "--token", envvar=TOKEN_ENV, show_envvar=True, show_default=False,
    help="bearer token allowed to run (or watch) the operation")]
JsonOption = Annotated[bool, typer.Option("--json", help="print one JSON document instead of text")]

_PROGRESS = re.compile(r"(\d+) of (\d+)")


class ProxyError(Exception):
    """The proxy could not be reached, or refused the command itself (401, 403, 400)."""


@dataclass
class JobState:
    """One job as its status URL shows it: still running (with progress) or finished."""

    url: str
    active: bool
    progress: str = ""
    done: int | None = None
    total: int | None = None
    http_status: int | None = None  # the operation's own answer once finished
    outcome: dict[str, Any] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


def verdict_of(outcome: dict[str, Any]) -> tuple[str, str]:
    """The first issue's code and text: the operation's verdict (``success``, ``incomplete``,
    ``informational`` for a dry run, or the refusal's code)."""
    first = (outcome.get("issue") or [{}])[0]
    return str(first.get("code", "unknown")), str(first.get("diagnostics", ""))


class ProxyClient:
    """Synchronous calls to one proxy with one token (a command runs them one after another)."""

    def __init__(self, base: str | None, token: str | None, timeout: float = 60.0) -> None:
        if not base:
            raise ProxyError(f"no proxy URL: give --proxy or set {URL_ENV}")
        self.base = base.rstrip("/")
        headers = {"Accept": "application/fhir+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, url, **kwargs)
        except httpx.HTTPError as failure:
            raise ProxyError(f"cannot reach the proxy at {self.base}: {type(failure).__name__}") from None

    def kick_off_purge(self, patient: str, dry_run: bool, confirm: bool) -> httpx.Response:
        """``POST Patient/<id>/$purge`` with ``Prefer: respond-async``: a 202 carries the job's
        status URL in ``Content-Location``; anything else is the refusal (or a 429: try later)."""
        params = {"dryRun": "true"} if dry_run else {}
        if confirm:
            params["confirm"] = "true"
        return self._send("POST", f"{self.base}/Patient/{patient}/$purge", params=params,
                          headers={"Prefer": "respond-async"})

    def job_url(self, job: str) -> str:
        return job if job.startswith(("http://", "https://")) else f"{self.base}/$async/{job}"

    def state(self, job: str) -> JobState:
        """Poll a job's status URL once."""
        url = self.job_url(job)
        answer = self._send("GET", url)
        if answer.status_code == 202:
            progress = answer.headers.get("X-Progress", "")
            found = _PROGRESS.search(progress)
            done, total = (int(found.group(1)), int(found.group(2))) if found else (None, None)
            return JobState(url, True, progress, done, total)
        if answer.status_code == 200 and body_of(answer).get("resourceType") == "Bundle":
            response = body_of(answer)["entry"][0]["response"]
            return JobState(url, False, http_status=int(response["status"].split()[0]),
                            outcome=response.get("outcome") or {})
        if answer.status_code == 404:  # cancelled (by anyone), or removed after jobs.retention_days
            return JobState(url, False, http_status=404, outcome=body_of(answer))
        self.refuse(answer)
        raise AssertionError("unreachable")

    def cancel(self, job: str) -> httpx.Response:
        return self._send("DELETE", self.job_url(job))

    def list_jobs(self, filters: dict[str, str], page_size: int, limit: int | None) -> list[dict[str, Any]]:
        """Every job the list shows (following ``next`` links), up to ``limit``; each as a flat dict."""
        jobs: list[dict[str, Any]] = []
        url: str | None = f"{self.base}/$async"
        params: dict[str, str] | None = {**filters, "_count": str(page_size)}
        while url and (limit is None or len(jobs) < limit):
            answer = self._send("GET", url, params=params)
            if answer.status_code != 200:
                self.refuse(answer)
            bundle = body_of(answer)
            jobs += [_flat(entry["resource"]) for entry in bundle.get("entry", [])]
            url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
            params = None  # the next link carries the query
        return jobs[:limit] if limit is not None else jobs

    @staticmethod
    def refuse(answer: httpx.Response) -> None:
        """Raise the proxy's refusal as one line: its status and the OperationOutcome's text."""
        code, text = verdict_of(body_of(answer))
        raise ProxyError(f"the proxy answered {answer.status_code} ({code}): {text or answer.reason_phrase}")


def body_of(answer: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object (an OperationOutcome, a Bundle), or ``{}`` when it has none."""
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _flat(parameters: dict[str, Any]) -> dict[str, Any]:
    """A job list entry (``Parameters``) as ``{name: value}``."""
    return {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in parameters["parameter"]}
