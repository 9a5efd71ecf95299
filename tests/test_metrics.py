"""``/metrics``: measured values after real purges and pass-through traffic, labels free of patient
data, upstream failures counted, and one view over every worker under ``serve --workers 2``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import respx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from purgeproxy.fhir.client import FhirClient, UpstreamError
from tests import seed as seeds
from tests.helpers import ASYNC, TOKEN, purge, texts, until_done
from tests.served import ROOT, free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
# every label a purgeproxy metric may have: closed sets, never an id, a path or a query value
ALLOWED_LABELS = {"method", "status_class", "client", "kind", "operation", "verdict", "phase", "status", "le"}


def parse(text: str) -> Samples:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(proxy: str) -> tuple[str, Samples]:
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.get(proxy.rsplit("/fhir", 1)[0] + "/metrics")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return answer.text, parse(answer.text)


def assert_no_patient_data(text: str, *values: str) -> None:
    """No given value anywhere in the exposition, and only the known labels on our metrics."""
    for secret in values:
        assert secret not in text
    for family in text_string_to_metric_families(text):
        if family.name.startswith("purgeproxy_"):
            for sample in family.samples:
                assert set(sample.labels) <= ALLOWED_LABELS, sample
                assert not any("/" in v or "?" in v for v in sample.labels.values()), sample


async def test_metrics_after_a_purge_are_measured_and_name_no_patient(proxy, upstream) -> None:
    kind, base = upstream
    seed = seeds.build(sizes={"Observation": 6, "Condition": 2}, shared=False)
    seeds.write(base, seed.resources)
    _, before = await scrape(proxy)

    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(2):  # pass-through, with a query value that must not reach a label
            found = await http.get(f"{proxy}/Patient?family=Secretfamily{seed.patient}")
            assert found.status_code == 200
    status, plan = await purge(proxy, seed.patient, query="?dryRun=true")
    assert status == 200
    status, outcome = await purge(proxy, seed.patient)
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    deleted = int(re.search(r"\((\d+) deleted\)", outcome["issue"][0]["diagnostics"]).group(1))
    assert deleted == len(seed.in_scope)
    text, after = await scrape(proxy)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("purgeproxy_passthrough_request_duration_seconds_count", method="GET", status_class="2xx") == 2
    assert delta("purgeproxy_passthrough_request_duration_seconds_sum", method="GET", status_class="2xx") > 0
    assert delta("purgeproxy_operations_total", operation="$purge", verdict="dry-run") == 1
    assert delta("purgeproxy_operations_total", operation="$purge", verdict="success") == 1
    assert delta("purgeproxy_resources_deleted_total", operation="$purge") == deleted
    hard = deleted if kind == "hapi" else 0  # HAPI's $expunge after each delete; Medplum has none
    assert delta("purgeproxy_resources_hard_deleted_total", operation="$purge") == hard
    assert delta("purgeproxy_operation_duration_seconds_count", operation="$purge") == 2
    assert delta("purgeproxy_operation_duration_seconds_sum", operation="$purge") > 0
    for phase in ("resolve", "plan", "delete", "verify"):
        assert delta("purgeproxy_operation_phase_seconds_count", phase=phase) >= 1, phase
    assert_no_patient_data(text, seed.patient, "Secretfamily")


async def test_upstream_failures_are_counted_by_client_and_kind(make_proxy) -> None:
    proxy = await make_proxy(f"http://127.0.0.1:{free_port()}/fhir")  # nothing listens there
    _, before = await scrape(proxy)
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(f"{proxy}/Patient/x1")).status_code == 502
        assert (await http.get(proxy.rsplit("/fhir", 1)[0] + "/readyz")).status_code == 503
    _, after = await scrape(proxy)
    name = "purgeproxy_upstream_errors_total"
    assert value(after, name, client="passthrough", kind="error") - value(before, name, client="passthrough", kind="error") == 1
    assert value(after, name, client="proxy", kind="error") - value(before, name, client="proxy", kind="error") == 1
    assert value(after, "purgeproxy_passthrough_request_duration_seconds_count", method="GET", status_class="5xx") >= 1


@respx.mock
async def test_the_proxys_own_client_reports_timeouts_and_errors() -> None:
    seen: list[int] = []
    base = "http://upstream.test/fhir"
    respx.get(f"{base}/Patient/slow").mock(side_effect=httpx.ReadTimeout("slow"))
    respx.get(f"{base}/Patient/broken").mock(return_value=httpx.Response(200, content=b"{not json"))
    respx.get(f"{base}/Patient/fine").mock(return_value=httpx.Response(200, json={"resourceType": "Patient"}))
    async with httpx.AsyncClient() as http:
        client = FhirClient(base, http, seen.append)
        for path, status in (("Patient/slow", 504), ("Patient/broken", 502)):
            try:
                await client.request("GET", path)
            except UpstreamError as failure:
                assert failure.status == status
        await client.request("GET", "Patient/fine")
    assert seen == [504, 502]


async def test_async_purge_jobs_are_counted(make_proxy, medplum_base) -> None:
    proxy = await make_proxy(medplum_base, auth={"admin_token": TOKEN}, jobs={"poll_seconds": 0.1})
    seed = seeds.build(sizes={"Observation": 3}, shared=False)
    seeds.write(medplum_base, seed.resources)
    _, before = await scrape(proxy)
    async with httpx.AsyncClient(timeout=60) as http:
        accepted = await http.post(f"{proxy}/Patient/{seed.patient}/$purge", headers=ASYNC)
        assert accepted.status_code == 202, accepted.text
        await until_done(http, accepted.headers["Content-Location"], timeout=60)
    text, after = await scrape(proxy)
    assert value(after, "purgeproxy_jobs_queued_total", operation="$purge") - \
        value(before, "purgeproxy_jobs_queued_total", operation="$purge") == 1
    assert value(after, "purgeproxy_jobs_finished_total", operation="$purge", status="completed") - \
        value(before, "purgeproxy_jobs_finished_total", operation="$purge", status="completed") == 1
    assert value(after, "purgeproxy_jobs_running", operation="$purge") == 0
    assert value(after, "purgeproxy_resources_deleted_total", operation="$purge") - \
        value(before, "purgeproxy_resources_deleted_total", operation="$purge") == len(seed.in_scope)
    assert_no_patient_data(text, seed.patient)


def test_serve_with_two_workers_aggregates_both(medplum_base: str, tmp_path: Path) -> None:
    """Both workers answer requests (SO_REUSEPORT spreads new connections); /metrics on either
    counts all of them; sample files a previous run left are removed at start."""
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "counter_1.db").write_bytes(b"left over by an earlier run")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"upstream": {"url": medplum_base},
                                      "jobs": {"store": str(tmp_path / "jobs.sqlite3")}}))
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(samples), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "purgeproxy", "serve", "--config", str(config),
                                    "--port", str(port), "--workers", "2"], cwd=ROOT, stdout=sink, stderr=sink, env=env)
    root = f"http://127.0.0.1:{port}"
    try:
        _wait(root, log)
        sent = 0
        # A new connection each time, until both workers have answered: the second may still be
        # importing when the first answers /healthz (on a loaded CI runner 300 requests, about 2 s,
        # once all reached one worker), so the bound is time, not a count.
        deadline = time.monotonic() + 60
        while sent < 20 or (len(_pids(samples)) < 2 and time.monotonic() < deadline):
            with httpx.Client(timeout=30) as http:
                assert http.get(f"{root}/fhir/Patient?_count=1").status_code == 200
            sent += 1
        assert len(_pids(samples)) == 2, f"both workers served: {sorted(p.name for p in samples.iterdir())}"
        assert not (samples / "counter_1.db").exists()
        for _ in range(4):  # whichever worker answers the scrape, it counts both
            with httpx.Client(timeout=30) as http:
                scraped = parse(http.get(f"{root}/metrics").text)
            assert value(scraped, "purgeproxy_passthrough_request_duration_seconds_count",
                         method="GET", status_class="2xx") == sent
    finally:
        process.terminate()
        process.wait(30)


def _pids(samples: Path) -> set[str]:
    """The processes that wrote pass-through samples (prometheus_client's ``<type>_<pid>.db``)."""
    return {path.stem.rsplit("_", 1)[1] for path in samples.glob("histogram_*.db")}


def _wait(root: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{root}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"the proxy did not start:\n{log.read_text()[-3000:]}")


def test_the_grafana_dashboard_uses_only_exported_metrics() -> None:
    """Every metric the dashboard queries is one purgeproxy.metrics defines, and every metric
    defined has a panel."""
    from prometheus_client import REGISTRY

    from purgeproxy import metrics

    dashboard = json.loads((ROOT / "deploy/grafana/purgeproxy.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"purgeproxy_\w+", target["expr"])}
    exported = {sample_name for family in REGISTRY.collect() if family.name.startswith("purgeproxy_")
                for sample_name in (family.name, f"{family.name}_total", f"{family.name}_count",
                                    f"{family.name}_sum", f"{family.name}_bucket")}
    assert queried <= exported, queried - exported
    defined = {m._name for m in vars(metrics).values() if hasattr(m, "_name") and hasattr(m, "_labelnames")}
    assert {d for d in defined if not any(q.startswith(d) for q in queried)} == set()
