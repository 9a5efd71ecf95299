"""``purgeproxy jobs list | show ID | watch ID | cancel ID``: the asynchronous jobs of a running
proxy, through its ``[base]/$async`` API (so with the same authorization as any other client).

Exit status: 0 when the command did what it says (``watch``/``show``: the job ended ``success``,
or a dry run answered), 1 when the job failed, is still running (``show``) or could not be
cancelled, 2 when the proxy cannot be asked or refuses the caller.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Annotated

import typer

from purgeproxy.cli.output import Output
from purgeproxy.cli.proxy_client import (
    UNREACHABLE,
    JobState,
    JsonOption,
    ProxyClient,
    ProxyError,
    ProxyOption,
    TokenOption,
    body_of,
    verdict_of,
)

JobId = Annotated[str, typer.Argument(help="the job id (or its status URL)")]
FAILED = 1
LIST_COLUMNS = ("id", "status", "operation", "target", "progress", "caller", "createdAt", "updatedAt")


def register(app: typer.Typer) -> None:
    jobs = typer.Typer(name="jobs", no_args_is_help=True, help="List, inspect, watch and cancel jobs.")
    jobs.command("list")(list_command)
    jobs.command("show")(show_command)
    jobs.command("watch")(watch_command)
    jobs.command("cancel")(cancel_command)
    app.add_typer(jobs)


@contextlib.contextmanager
def _talking(proxy: str | None, token: str | None, output: Output) -> Iterator[ProxyClient]:
    """A client of the running proxy for one command: closed after it, and a proxy that cannot be
    reached (or a refused token) is one line and the exit status ``UNREACHABLE``."""
    try:
        client = ProxyClient(proxy, token)
        try:
            yield client
        finally:
            client.close()
    except ProxyError as failure:
        output.error(str(failure))
        raise typer.Exit(UNREACHABLE) from None


def list_command(
    proxy: ProxyOption = None,
    token: TokenOption = None,
    status: Annotated[str | None, typer.Option(help="only jobs in this status: new, processing, "
                                               "completed, error, cancelled")] = None,
    operation: Annotated[str | None, typer.Option(help="only this operation, e.g. $purge")] = None,
    since: Annotated[str | None, typer.Option(help="only jobs changed since this instant "
                                              "(e.g. 2026-01-01T00:00:00Z)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many jobs, newest first")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first (your own, or every job if your token may run every operation)."""
    output = Output(as_json)
    filters = {name: value for name, value in
               (("status", status), ("operation", operation), ("_since", since)) if value is not None}
    with _talking(proxy, token, output) as client:
        jobs = client.list_jobs(filters, min(limit, 500), limit)
    if as_json:
        output.json({"jobs": jobs})
        return
    for job in jobs:  # a finished job's progress is its verdict
        job["progress"] = job.get("resultCode", job.get("progress"))
    output.table(f"{len(jobs)} job(s)", LIST_COLUMNS, [[job.get(c, "") for c in LIST_COLUMNS] for job in jobs])


def show_command(job: JobId, proxy: ProxyOption = None, token: TokenOption = None,
                 as_json: JsonOption = False) -> None:
    """Show one job: its progress while it runs, its whole answer once it ended."""
    output = Output(as_json)
    with _talking(proxy, token, output) as client:
        state = client.state(job)
    _print_state(output, state)
    raise typer.Exit(_status(state))


def watch_command(job: JobId, proxy: ProxyOption = None, token: TokenOption = None,
                  poll: Annotated[float, typer.Option("--poll", min=0.05, help="seconds between polls")] = 1.0,
                  as_json: JsonOption = False) -> None:
    """Follow a job with a progress bar until it ends; the exit status says how it ended."""
    output = Output(as_json)
    name = f"job {job.rstrip('/').rsplit('/', 1)[-1]}"
    with _talking(proxy, token, output) as client, output.progress([name]) as view:
        state = client.state(job)
        while state.active:
            view.update(name, state.progress, state.done, state.total)
            time.sleep(poll)
            state = client.state(job)
        view.finish(name, verdict_of(state.outcome)[0])
    _print_state(output, state)
    raise typer.Exit(_status(state))


def cancel_command(job: JobId, proxy: ProxyOption = None, token: TokenOption = None,
                   as_json: JsonOption = False) -> None:
    """Cancel a queued or running job; it stops after the batch in flight."""
    output = Output(as_json)
    with _talking(proxy, token, output) as client:
        answer = client.cancel(job)
    body = body_of(answer)
    if answer.status_code in (401, 403):
        output.error(f"the proxy answered {answer.status_code}: {verdict_of(body)[1]}")
        raise typer.Exit(UNREACHABLE)
    cancelled = answer.status_code == 202
    if as_json:
        output.json({"job": job, "cancelled": cancelled, "status": answer.status_code, "outcome": body})
    else:
        output.line(verdict_of(body)[1] or f"the proxy answered {answer.status_code}")
    raise typer.Exit(0 if cancelled else FAILED)


def _status(state: JobState) -> int:
    """0 when the job ended well: ``success``, or an informational answer (a dry run) with 200."""
    if state.active:
        return FAILED
    return 0 if state.http_status == 200 and verdict_of(state.outcome)[0] in ("success", "informational") else FAILED


def _print_state(output: Output, state: JobState) -> None:
    if output.as_json:
        output.json({"job": state.job_id, "url": state.url, "active": state.active, "progress": state.progress,
                     "done": state.done, "total": state.total, "status": state.http_status,
                     "outcome": state.outcome or None})
        return
    if state.active:
        output.line(f"job {state.job_id}: {state.progress}")
        return
    code, _ = verdict_of(state.outcome)
    output.line(f"job {state.job_id}: ended {code} (HTTP {state.http_status})")
    for found in state.outcome.get("issue", []):
        output.line(f"  {found.get('severity', '')}: {found.get('diagnostics', '')}")
