"""FHIR asynchronous requests (``Prefer: respond-async``): kick-off, status polling, cancel.

Operations stay in charge of validation: they call :func:`kick_off` only with a request that the
synchronous path would have run, so every 4xx is answered before a job is stored. The status URL
is ``[base]/$async/<job-id>`` on any replica (the store is shared); Kodjin's
``[base]/patient-purge/<job-id>`` shows the same job as a ``Parameters``; Microsoft's
``[base]/_operations/bulk-delete/<job-id>`` shows a ``$bulk-delete`` job (``DELETE`` cancels).
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, get_args
from urllib.parse import urlencode

from aiohttp import web

from purgeproxy import metrics
from purgeproxy.access_log import REQUEST_ID
from purgeproxy.app_keys import CALLER_LIMITS, CONFIG, JOB_STORE, JOB_WORKERS, PASSTHROUGH
from purgeproxy.config import Operation
from purgeproxy.fhir.outcome import OutcomeError, issue, outcome
from purgeproxy.jobs import fanout
from purgeproxy.jobs.store import CANCELLED, Job, JobFilter, JobStatus, Quota, QuotaExceeded
from purgeproxy.jobs.worker import cancelled_outcome
from purgeproxy.operations.common import caller_of
from purgeproxy.operations.params import BadRequest
from purgeproxy.render import render
from purgeproxy.security.errors import Denied

# jobs stored under a name that is not an operation the authorizer knows, and what they are authorized as
AUTHORIZED_AS = {"$reapply": "$purge"}  # re-applying erasures (purgeproxy.receipts.routes)
ASYNC_STATUS = "$async"  # [base]/$async/<job-id>: FHIR's asynchronous request pattern
KODJIN_STATUS = "patient-purge"  # [base]/patient-purge/<job-id>: Kodjin's Parameters shape
MICROSOFT_STATUS = "_operations/bulk-delete"  # [base]/_operations/bulk-delete/<job-id>: $bulk-delete's
BULK_DELETE = "$bulk-delete"  # the job operation Microsoft's status shape shows
HTTP_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 409: "Conflict",
                422: "Unprocessable Entity", 500: "Internal Server Error", 502: "Bad Gateway",
                504: "Gateway Timeout"}


def wants_async(request: web.Request) -> bool:
    """``Prefer: respond-async``, alone or among other preferences (``handling=strict`` …)."""
    preferences = ",".join(request.headers.getall("Prefer", []))
    tokens = {part.split("=")[0].strip().lower() for part in preferences.replace(";", ",").split(",")}
    return "respond-async" in tokens


def status_url(request: web.Request, job_id: str, status_path: str = ASYNC_STATUS) -> str:
    """Absolute, under the proxy's public base (``server.public_url`` when set)."""
    return f"{request.app[PASSTHROUGH].mount.public_base(request)}/{status_path}/{job_id}"


def _informational(request: web.Request, status: int, text: str, headers: dict[str, str]) -> web.Response:
    return render(request, outcome(issue("information", "informational", text)), status, headers)


async def kick_off(request: web.Request, operation: str, target: str, payload: dict[str, Any],
                   what: str, status_path: str = ASYNC_STATUS) -> web.Response:
    """Store the job (or find the active one for ``target``) and answer 202 with its status URL
    (``status_path`` names the vendor's shape); 429 when the caller (``payload["caller"]``) or the
    whole store has too many jobs active."""
    limits = request.app[CALLER_LIMITS]
    quota = Quota(payload["caller"], limits.free(payload["caller"]), request.app[CONFIG].jobs.max_queued)
    carried = {**payload, "request_id": request[REQUEST_ID]}  # the job's log lines and upstream calls carry it
    try:
        job, created = await request.app[JOB_STORE].submit(uuid.uuid4().hex, operation,
                                                           f"{operation} {target}", carried, quota)
    except QuotaExceeded as full:
        raise (limits.caller_refusal() if full.which == "caller" else limits.queue_refusal(full.limit)) from None
    if created:
        metrics.job_queued(operation)
        request.app[JOB_WORKERS].notify()
    url = status_url(request, job.id, status_path)
    text = (f"{what} was accepted as job {job.id}; poll {url} for its progress and result" if created
            else f"{what} is already {job.status} as job {job.id}; poll {url}")
    return _informational(request, 202, text, {"Content-Location": url})


async def progress_of(request: web.Request, job: Job) -> str:
    """A fan-out job's progress is its children's, read now; any other job's is its own."""
    if fanout.is_parent(job):
        return fanout.progress(job, await request.app[JOB_STORE].children(job.id, answers=False)).text
    return progress_text(job)


def progress_text(job: Job) -> str:
    if job.total is None:
        return "queued" if job.status == "new" else "resolving the compartment"
    return f"purged {job.done} of {job.total}"


def result_bundle(job: Job) -> dict[str, Any]:
    """The final answer as FHIR's async pattern wants it: a batch-response with one entry."""
    result = job.result or {"status": 500, "outcome": outcome(issue(
        "error", "exception", "the job ended without recording a result"))}
    status = int(result["status"])
    return {"resourceType": "Bundle", "type": "batch-response", "entry": [{"response": {
        "status": f"{status} {HTTP_REASONS.get(status, '')}".strip(), "outcome": result["outcome"]}}]}


async def job_for(request: web.Request, show_cancelled: bool = False) -> Job:
    """The job the URL names, once the caller may run its operation; otherwise the refusal, which
    comes before any 404 so that job ids cannot be probed. A cancelled job is gone for the FHIR
    async pattern (404) but still visible in Kodjin's shape."""
    job = await request.app[JOB_STORE].get(request.match_info["job_id"])
    authorized_as = job.payload.get("authorized_as") or AUTHORIZED_AS.get(job.operation, job.operation) if job else "$purge"
    await caller_of(request, authorized_as, destructive=False,
                    patient=job.payload.get("request", {}).get("patient_id") if job else None)
    if job is None:
        raise OutcomeError(404, "not-found", "no such job")
    if job.status == CANCELLED and not show_cancelled:
        raise OutcomeError(404, "not-found", f"job {job.id} was cancelled")
    return job


async def status(request: web.Request) -> web.Response:
    job = await job_for(request)
    if job.active:
        headers = {"X-Progress": await progress_of(request, job),
                   "Retry-After": str(request.app[CONFIG].jobs.retry_after_seconds)}
        return _informational(request, 202, f"job {job.id} is {job.status}: {headers['X-Progress']}", headers)
    return render(request, result_bundle(job))


async def cancel(request: web.Request) -> web.Response:
    job = await job_for(request)
    if not job.active:
        raise OutcomeError(409, "conflict", f"job {job.id} has already finished ({job.status})")
    job = await request.app[JOB_STORE].cancel(job.id) or job
    return _informational(request, 202, f"job {job.id} is cancelled: {job.done} resource(s) had been removed "
                          "so far; it stops after the batch in flight", {})


def kodjin_parameters(job: Job) -> dict[str, Any]:
    """Kodjin's ``patient-purge`` status shape; once the job ended, also why (``statusReason``,
    its answer's verdict; the whole answer is at the ``$async`` URL): a failed job never shows
    only "0 of 0"."""
    patients = job.payload.get(fanout.PATIENTS) or [job.payload.get("request", {}).get("patient_id")]
    values = [*(("patientId", "valueString", patient) for patient in patients),
              ("updatedAt", "valueInstant", job.updated_at.isoformat(timespec="seconds")),
              ("status", "valueCode", job.status),
              ("totalResourcesCount", "valueInteger", job.total or 0),
              ("purgedResourcesCount", "valueInteger", job.done)]
    parameters: list[dict[str, Any]] = [{"name": name, kind: value} for name, kind, value in values]
    if not job.active:
        answer = result_bundle(job)["entry"][0]["response"]["outcome"]
        first = (answer.get("issue") or [{}])[0]
        parameters.append({"name": "statusReason", "valueString": first.get("diagnostics", job.status)})
    return {"resourceType": "Parameters", "parameter": parameters}


async def patient_purge_status(request: web.Request) -> web.Response:
    job = await job_for(request, show_cancelled=True)
    if job.operation != "$purge" and not fanout.is_parent(job):
        raise OutcomeError(404, "not-found", "no such patient purge job")
    if fanout.is_parent(job) and job.active:  # the counts summed over the patients, read now
        now = fanout.progress(job, await request.app[JOB_STORE].children(job.id, answers=False))
        job = replace(job, done=now.done, total=now.total)
    return render(request, kodjin_parameters(job))


LIST_PAGE = 50  # jobs per page of the list unless ``_count`` says otherwise
LIST_PAGE_MAX = 500
LIST_PARAMETERS = {"status", "operation", "_since", "_count", "_offset"}


async def _visible_jobs(request: web.Request) -> str | None:
    """Whose jobs the caller may list: everyone's (``None``) when it may read every job's status,
    i.e. run every destructive operation on any patient (as the status endpoint asks job by job);
    otherwise only its own. A caller allowed no operation at all is refused, as on the status
    endpoint."""
    allowed: list[str] = []
    refusal: Denied | None = None
    for operation in get_args(Operation):
        try:
            allowed.append((await caller_of(request, operation, destructive=False)).name)
        except Denied as denied:
            refusal = refusal or denied
        if allowed and refusal is not None:  # the answer is known: its own jobs
            break
    if not allowed:
        assert refusal is not None
        raise refusal
    return None if refusal is None else allowed[0]


def _list_filter(request: web.Request, caller: str | None) -> tuple[JobFilter, int, int]:
    """The query's filters, page size and offset; anything unknown or malformed is a 400, never
    silently ignored (an operator would read a wrong list as the truth)."""
    query = request.query
    unknown = sorted(set(query) - LIST_PARAMETERS)
    if unknown:
        raise BadRequest(400, "not-supported", f"unknown job list parameter(s): {', '.join(unknown)}")
    status = query.get("status")
    if status is not None and status not in get_args(JobStatus):
        raise BadRequest(400, "invalid", f"status must be one of {', '.join(get_args(JobStatus))}", "status")
    since = None
    if "_since" in query:
        try:
            since = datetime.fromisoformat(query["_since"].replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest(400, "invalid", "_since must be an instant (e.g. 2026-01-01T00:00:00Z)",
                             "_since") from None
        if since.tzinfo is None:
            raise BadRequest(400, "invalid", "_since must carry a time zone", "_since")
    count = _integer(query, "_count", LIST_PAGE, 1, LIST_PAGE_MAX)
    offset = _integer(query, "_offset", 0, 0, 2**31)
    return JobFilter(caller, status, query.get("operation"), since), count, offset


def _integer(query: Any, name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise BadRequest(400, "invalid", f"{name} must be a whole number from {low} to {high}", name)
    return int(text)


def job_summary(job: Job) -> dict[str, Any]:
    """One job as a ``Parameters`` entry of the list: what it is, how far, and when."""
    values: list[tuple[str, str, Any]] = [
        ("id", "valueString", job.id), ("operation", "valueString", job.operation),
        ("target", "valueString", job.target), ("status", "valueCode", job.status),
        ("done", "valueInteger", job.done), ("total", "valueInteger", job.total),
        ("progress", "valueString", progress_text(job) if job.active else job.status),
        ("caller", "valueString", job.payload.get("caller")),
        ("createdAt", "valueInstant", job.created_at.isoformat(timespec="seconds") if job.created_at else None),
        ("updatedAt", "valueInstant", job.updated_at.isoformat(timespec="seconds"))]
    if not job.active:
        answer = result_bundle(job)["entry"][0]["response"]
        values.append(("resultStatus", "valueString", answer["status"]))
        first = (answer["outcome"].get("issue") or [{}])[0]
        values.append(("resultCode", "valueCode", first.get("code")))
    return {"resourceType": "Parameters", "parameter": [
        {"name": name, kind: value} for name, kind, value in values if value is not None]}


async def job_list(request: web.Request) -> web.Response:
    """``GET [base]/$async``: a searchset Bundle of jobs, newest first, paged with ``next``."""
    caller = await _visible_jobs(request)
    where, count, offset = _list_filter(request, caller)
    jobs = await request.app[JOB_STORE].list_jobs(where, count + 1, offset)  # one more: is there a next page?
    base = f"{request.app[PASSTHROUGH].mount.public_base(request)}/$async"
    links = [{"relation": "self", "url": _page_url(base, dict(request.query))}]
    if len(jobs) > count:
        links.append({"relation": "next", "url": _page_url(
            base, {**request.query, "_count": str(count), "_offset": str(offset + count)})})
    bundle = {"resourceType": "Bundle", "type": "searchset", "link": links,
              "entry": [{"fullUrl": f"{base}/{job.id}", "resource": job_summary(job)} for job in jobs[:count]]}
    return render(request, bundle)


def _page_url(base: str, query: dict[str, str]) -> str:
    return f"{base}?{urlencode(query)}" if query else base


def bulk_delete_parameters(job: Job) -> tuple[int, dict[str, Any]]:
    """Microsoft's shape once the job ended: 200 with ``ResourceDeletedCount`` per type (also
    when cancelled), and the proxy's outcome; a job refused or failed before deleting answers
    with its own status and OperationOutcome."""
    result = job.result or (cancelled_outcome(job.done) if job.status == CANCELLED else {})
    answer = result.get("outcome") or outcome(issue("error", "exception", "the job ended without a result"))
    counts = (result.get("details") or {}).get("ResourceDeletedCount")
    if job.status != CANCELLED and counts is None:  # refused or failed before deleting: its own status
        return int(result.get("status", 500)), answer
    parts = [{"name": rtype, "valueInteger64": count} for rtype, count in (counts or {}).items()]
    uncounted = job.done - sum((counts or {}).values())
    if uncounted > 0:  # the counts are this attempt's deletes, measured; say what they do not cover
        answer = {**answer, "issue": [*answer.get("issue", []), issue(
            "information", "informational", f"{uncounted} of the {job.done} resource(s) removed are not in "
            "ResourceDeletedCount: removed by an earlier attempt of this job (a replica that stopped), or "
            "already gone when their delete came")]}
    return 200, {"resourceType": "Parameters", "parameter": [
        {"name": "ResourceDeletedCount", "part": parts}, {"name": "outcome", "resource": answer}]}


def _stopping(job: Job, lease_seconds: float) -> bool:
    """Cancelled, and its worker has not yet recorded what it removed (it does after the batch in
    flight); a worker silent for two leases is not coming back: the job answers as it is."""
    age = (datetime.now(UTC) - job.updated_at).total_seconds()
    return job.status == CANCELLED and job.result is None and job.owner is not None and age < 2 * lease_seconds


async def bulk_delete_status(request: web.Request) -> web.Response:
    job = await job_for(request, show_cancelled=True)
    if job.operation != BULK_DELETE:
        raise OutcomeError(404, "not-found", "no such bulk-delete job")
    if job.active or _stopping(job, request.app[CONFIG].jobs.lease_seconds):
        progress = ("searching for matches" if job.total is None and job.status == "processing"
                    else "cancelled; stopping after the batch in flight" if job.status == CANCELLED
                    else progress_text(job).replace("purged", "deleted"))
        headers = {"X-Progress": progress, "Retry-After": str(request.app[CONFIG].jobs.retry_after_seconds)}
        body = outcome(issue("information", "informational", f"job {job.id} is {job.status}: {progress}"))
        return render(request, body, 202, headers)
    code, body = bulk_delete_parameters(job)
    return render(request, body, code)


async def bulk_delete_cancel(request: web.Request) -> web.Response:
    job = await job_for(request)
    if job.operation != BULK_DELETE:
        raise OutcomeError(404, "not-found", "no such bulk-delete job")
    return await cancel(request)


def add_routes(app: web.Application, base: str) -> None:
    app.router.add_route("GET", f"{base}/{ASYNC_STATUS}", job_list)
    path = f"{base}/{ASYNC_STATUS}/{{job_id}}"
    app.router.add_route("GET", path, status)
    app.router.add_route("DELETE", path, cancel)
    app.router.add_route("GET", f"{base}/{KODJIN_STATUS}/{{job_id}}", patient_purge_status)
    app.router.add_route("GET", f"{base}/{MICROSOFT_STATUS}/{{job_id}}", bulk_delete_status)
    app.router.add_route("DELETE", f"{base}/{MICROSOFT_STATUS}/{{job_id}}", bulk_delete_cancel)
