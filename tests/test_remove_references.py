"""``_remove-references`` on ``$purge``: a kept resource that references the purged patient (a
Coverage shared with a control patient) loses that reference as a new version, its other content
unchanged; on HAPI the Patient's delete is then no longer blocked. Off by default."""

from __future__ import annotations

from typing import Any

import httpx

from tests import seed as seeds
from tests.helpers import AUTH, assert_kept_referrer_reported, purge, texts
from tests.seed import ref


def _without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


def _coverage(tag: str, seed: seeds.Seed) -> dict[str, Any]:
    return {"resourceType": "Coverage", "id": f"{tag}-cov", "status": "active",
            "identifier": [{"system": "urn:test", "value": tag}], "subscriberId": "S-1",
            "subscriber": ref("Patient", seed.patient), "beneficiary": ref("Patient", seed.control),
            "payor": [ref("Patient", seed.control)], "relationship": {"text": "self"}}


async def test_a_kept_resource_loses_only_its_reference(proxy: str, upstream: tuple[str, str]) -> None:
    kind, base = upstream
    tag = seeds.new_tag()
    seed = seeds.build(tag, sizes={"Observation": 20, "Condition": 3}, shared=False)
    coverage = _coverage(tag, seed)
    seeds.write(base, [*seed.resources, coverage])
    before = seeds.snapshot(base, seed.untouchable)

    status, outcome = await purge(proxy, seed.patient, query="?_remove-references=true")
    assert status == 200, outcome
    report = texts(outcome)
    assert outcome["issue"][0]["code"] == "success", report  # HAPI too: nothing blocks the Patient now
    assert f"Coverage/{coverage['id']}: reference(s) to Patient/{seed.patient} removed" in report
    assert seeds.present(base, seed.in_scope) == []
    now = httpx.get(f"{base}/Coverage/{coverage['id']}", headers=seeds.FHIR).json()
    expected = {k: v for k, v in coverage.items() if k != "subscriber"}
    assert _without_meta(now) == expected  # only the reference went
    assert now["meta"]["versionId"] != "1"
    assert seeds.snapshot(base, seed.untouchable) == before


async def test_off_by_default(proxy: str, upstream: tuple[str, str]) -> None:
    kind, base = upstream
    tag = seeds.new_tag()
    seed = seeds.build(tag, sizes={"Observation": 5}, shared=False)
    coverage = _coverage(tag, seed)
    seeds.write(base, [*seed.resources, coverage])
    before = seeds.snapshot(base, [*seed.untouchable, ("Coverage", coverage["id"])])
    status, outcome = await purge(proxy, seed.patient)
    assert status == 200, outcome
    assert "reference(s) to" not in texts(outcome)
    assert seeds.snapshot(base, [*seed.untouchable, ("Coverage", coverage["id"])]) == before
    if kind == "hapi":
        assert_kept_referrer_reported(outcome, kind, seed.patient, f"Coverage/{coverage['id']}")


async def test_a_dry_run_only_says_what_would_go(proxy: str, upstream: tuple[str, str]) -> None:
    _, base = upstream
    tag = seeds.new_tag()
    seed = seeds.build(tag, sizes={"Observation": 5}, shared=False)
    coverage = _coverage(tag, seed)
    seeds.write(base, [*seed.resources, coverage])
    keys = [*seed.untouchable, *seed.in_scope, ("Coverage", coverage["id"])]
    before = seeds.snapshot(base, keys)
    async with httpx.AsyncClient(timeout=120) as http:
        answer = await http.post(f"{proxy}/Patient/{seed.patient}/$purge?_remove-references=true&dryRun=true",
                                 headers=AUTH)
    assert answer.status_code == 200
    assert "reference(s) to Patient/" in texts(answer.json()) and "would be removed" in texts(answer.json())
    assert seeds.snapshot(base, keys) == before
