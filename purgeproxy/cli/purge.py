"""``purgeproxy purge PATIENT…``: purge patients through a running proxy, or with ``--config``
directly on the upstream (the same engine, no HTTP server), showing progress and a summary.

Through a proxy each patient is an asynchronous ``$purge`` (``Prefer: respond-async``), its job
polled for progress; patients the caller's limit does not admit yet (429) wait for a free slot.
The exit status is 0 only when every patient's purge ended ``success`` (a dry run: answered
without error), 1 otherwise, 2 for usage mistakes and a proxy that cannot be asked at all.
"""

from __future__ import annotations

import asyncio
import getpass
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from aiohttp import web

from purgeproxy import logs
from purgeproxy.app import create_app
from purgeproxy.app_keys import CONFIG, PROFILE
from purgeproxy.cli.output import Output, ProgressView
from purgeproxy.cli.proxy_client import (
    UNREACHABLE,
    JsonOption,
    ProxyClient,
    ProxyError,
    ProxyOption,
    TokenOption,
    body_of,
    verdict_of,
)
from purgeproxy.config import Config, ConfigError, load_config
from purgeproxy.engine.context import require_hard_delete_possible
from purgeproxy.engine.purge import PurgeRequest
from purgeproxy.engine.report import result_outcome
from purgeproxy.fhir.outcome import OutcomeError
from purgeproxy.fhir.references import is_valid_id
from purgeproxy.operations.purge import audit_result, engine_of
from purgeproxy.security.authorizer import Caller

NOT_ALL_SUCCESS = 1
USAGE = 2
INTERRUPTED = 130  # as a shell reports Ctrl-C


@dataclass
class PatientResult:
    """How one patient's purge ended: the operation's HTTP status and OperationOutcome."""

    patient: str
    http_status: int
    outcome: dict[str, Any]
    dry_run: bool
    job: str | None = None  # the job id, through a proxy
    removed: int | None = None  # as the job's last progress said
    verdict: str = field(init=False)
    text: str = field(init=False)

    def __post_init__(self) -> None:
        self.verdict, self.text = verdict_of(self.outcome)

    @property
    def ok(self) -> bool:
        """``success``, or for a dry run the informational plan answered with 200."""
        expected = "informational" if self.dry_run else "success"
        return self.http_status == 200 and self.verdict == expected

    def as_json(self) -> dict[str, Any]:
        return {"patient": self.patient, "ok": self.ok, "verdict": self.verdict, "status": self.http_status,
                "job": self.job, "outcome": self.outcome}


def register(app: typer.Typer) -> None:
    app.command("purge")(purge_command)


def purge_command(
    patients: Annotated[list[str] | None, typer.Argument(help="Patient ids to purge", show_default=False)] = None,
    from_file: Annotated[Path | None, typer.Option("--from-file", help="a file of Patient ids, one per "
                                                   "line (# comments and blank lines ignored)")] = None,
    proxy: ProxyOption = None,
    token: TokenOption = None,
    config: Annotated[Path | None, typer.Option("--config", help="run the engine directly on the upstream "
                                                "this YAML configuration names, without a proxy")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only report what would be deleted")] = False,
    confirm: Annotated[bool, typer.Option("--confirm", help="allow purges larger than "
                                          "purge.max_without_confirm")] = False,
    poll: Annotated[float, typer.Option("--poll", min=0.05, help="seconds between status polls")] = 0.5,
    details: Annotated[bool, typer.Option("--details", help="print every issue of each patient's "
                                          "answer: counts per type, what is kept and why")] = False,
    as_json: JsonOption = False,
) -> None:
    """Purge patients (every resource in their compartment, with history), with progress."""
    output = Output(as_json)
    ids = _patient_ids(patients or [], from_file, output)
    loaded = _load(config, output) if config is not None else None
    try:
        client = None if loaded else ProxyClient(proxy, token)
        with output.progress([f"Patient/{pid}" for pid in ids]) as view:
            if loaded is not None:
                results = asyncio.run(_direct(loaded, ids, dry_run, confirm, view))
            else:
                assert client is not None
                results = _through_proxy(client, ids, dry_run, confirm, poll, view)
    except ProxyError as failure:
        output.error(str(failure))
        raise typer.Exit(UNREACHABLE) from None
    except KeyboardInterrupt:
        output.error("interrupted; through a proxy, the jobs already started keep running "
                     "(purgeproxy jobs list, jobs cancel ID)")
        raise typer.Exit(INTERRUPTED) from None
    _report(output, results, dry_run, details)
    raise typer.Exit(0 if all(result.ok for result in results) else NOT_ALL_SUCCESS)


def _patient_ids(given: list[str], from_file: Path | None, output: Output) -> list[str]:
    ids = list(given)
    if from_file is not None:
        try:
            lines = from_file.read_text().splitlines()
        except OSError as failure:
            output.error(f"cannot read {from_file}: {failure.strerror}")
            raise typer.Exit(USAGE) from None
        ids += [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]
    ids = [pid.removeprefix("Patient/") for pid in ids]
    bad = [pid for pid in ids if not is_valid_id(pid)]
    if not ids or bad:
        output.error("no patient given (PATIENT… or --from-file)" if not ids
                     else f"not a FHIR id: {', '.join(bad)}")
        raise typer.Exit(USAGE)
    return list(dict.fromkeys(ids))  # each patient once, in the order given


def _load(path: Path, output: Output) -> Config:
    """The configuration for a direct run, refused as the proxy would refuse it in read-only mode."""
    try:
        config = load_config(path, {"jobs.workers": 0})  # this process runs no queued job
    except ConfigError as mistake:
        output.error(f"config error: {mistake}")
        raise typer.Exit(USAGE) from None
    if config.safety.read_only:
        output.error("the configuration is read-only (safety.read_only): nothing is purged")
        raise typer.Exit(USAGE)
    logs.configure(config.logging.level, config.logging.format)  # the audit lines on stderr
    return config


def _through_proxy(client: ProxyClient, ids: list[str], dry_run: bool, confirm: bool, poll: float,
                   view: ProgressView) -> list[PatientResult]:
    """Kick off as many purges as the proxy admits, poll them, start the rest as slots free up."""
    waiting = list(ids)
    running: dict[str, str] = {}
    results: dict[str, PatientResult] = {}
    try:
        while waiting or running:
            while waiting:
                answer = client.kick_off_purge(waiting[0], dry_run, confirm)
                if answer.status_code == 429:  # the caller's limit: wait for one of ours to end
                    view.update(f"Patient/{waiting[0]}", "waiting for a free slot (429)")
                    if not running:
                        retry = answer.headers.get("Retry-After", "1")
                        time.sleep(min(int(retry), 60) if retry.isdigit() else 1)
                    break
                patient = waiting.pop(0)
                if answer.status_code == 202 and "Content-Location" in answer.headers:
                    running[patient] = answer.headers["Content-Location"]
                    view.update(f"Patient/{patient}", "queued")
                elif answer.status_code in (401, 403) and not running and not results:
                    client.refuse(answer)  # refused at the first patient: the token, most likely
                else:  # refused before any job: its OperationOutcome is the result
                    results[patient] = PatientResult(patient, answer.status_code, body_of(answer), dry_run)
                    view.finish(f"Patient/{patient}", results[patient].verdict)
            for patient, url in list(running.items()):
                state = client.state(url)
                if state.active:
                    view.update(f"Patient/{patient}", state.progress, state.done, state.total)
                    continue
                del running[patient]
                results[patient] = PatientResult(patient, state.http_status or 0, state.outcome, dry_run,
                                                 state.job_id)
                view.finish(f"Patient/{patient}", results[patient].verdict)
            if running:
                time.sleep(poll)
    finally:
        client.close()
    return [results[patient] for patient in ids]


async def _direct(config: Config, ids: list[str], dry_run: bool, confirm: bool,
                  view: ProgressView) -> list[PatientResult]:
    """The engine on the upstream itself, patient after patient, as the ``$purge`` handler runs
    it: the app's own start-up without serving or job workers (``reapply`` starts the same way),
    so the upstream clients (``upstream.auth``, ``upstream.tls``), the profile, the receipts and
    the audit are the proxy's. The caller is the local user."""
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    caller = Caller(f"cli:{getpass.getuser()}")
    try:
        return [await _direct_one(app, caller, patient, dry_run, confirm, view) for patient in ids]
    finally:
        await runner.cleanup()


async def _direct_one(app: web.Application, caller: Caller, patient: str, dry_run: bool, confirm: bool,
                      view: ProgressView) -> PatientResult:
    name = f"Patient/{patient}"
    config = app[CONFIG]

    async def progress(done: int, total: int) -> None:
        view.update(name, f"purged {done} of {total}", done, total)

    view.update(name, "resolving the compartment")
    try:
        profile = await app[PROFILE].get()
        require_hard_delete_possible(config.purge.hard_delete, profile.kind)
        engine = engine_of(app, profile)
        request = PurgeRequest(patient, dict(profile.definitions.patient_compartment), dry_run, confirm)
        result = await engine.run(request, progress)
        await audit_result(app, caller, result)
    except OutcomeError as refused:
        done = PatientResult(patient, refused.status, refused.document(), dry_run)
    else:
        status = result.interruption.status if result.interruption else 200
        done = PatientResult(patient, status, result_outcome(result), dry_run, removed=result.removed)
    view.finish(name, done.verdict, done.removed)
    return done


def _report(output: Output, results: list[PatientResult], dry_run: bool, details: bool) -> None:
    ok = sum(result.ok for result in results)
    if output.as_json:
        output.json({"dryRun": dry_run, "ok": ok == len(results), "results": [r.as_json() for r in results]})
        return
    columns: tuple[str, ...] = ("Patient", "Verdict", "Status", "Job", "Detail")
    rows: list[tuple[Any, ...]] = [(f"Patient/{r.patient}", r.verdict, r.http_status, r.job or "", r.text)
                                   for r in results]
    if not any(r.job for r in results):  # a direct run (--config) has no jobs
        columns, rows = columns[:3] + columns[4:], [row[:3] + row[4:] for row in rows]
    output.table("Dry run" if dry_run else "Purge", columns, rows)
    for result in results:  # every issue with --details; otherwise why a patient is not ok
        shown = [found for found in result.outcome.get("issue", [])[1:]
                 if details or (not result.ok and found.get("severity") != "information")]
        if shown:
            output.line(f"Patient/{result.patient}:")
        for found in shown:
            output.line(f"  {found.get('severity', '')}: {found.get('diagnostics', '')}")
    expected = "answered" if dry_run else "ended success"
    output.line(f"{ok} of {len(results)} patient(s) {expected}")
