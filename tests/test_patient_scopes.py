"""``patient/`` scopes reach only the token's own patient: a token for patient A with
``patient/Patient.$purge`` cannot purge patient B (nor watch or cancel B's job); a token without
a patient is refused; a ``patient/`` scope for an operation that is not tied to one patient
cannot be configured. Real signed JWTs, a real upstream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from purgeproxy.config import ConfigError, parse_config
from tests import log_capture
from tests import seed as seeds
from tests.fake_upstream import BASE, scripted_upstream, writes
from tests.helpers import AUTH, TOKEN
from tests.jwt_tokens import AUDIENCE, ISSUER, SIGNING_KEY, introspection_policy, public_jwk, purge, token


@pytest.fixture
def upstream() -> Iterator[respx.MockRouter]:
    yield from scripted_upstream()


SCOPE = "patient/Patient.$purge"


def _policy() -> dict[str, Any]:
    return {"admin_token": TOKEN, "scopes": {"$purge": [SCOPE]},
            "jwt": {"issuer": ISSUER, "audience": AUDIENCE, "keys": [public_jwk(SIGNING_KEY, "k1")]}}


async def _purge(proxy: str, patient: str, bearer: str, prefer: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {bearer}", **({"Prefer": prefer} if prefer else {})}
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(f"{proxy}/Patient/{patient}/$purge", headers=headers)


async def test_a_patient_scope_purges_its_own_patient_only(make_proxy: Any, medplum_base: str) -> None:
    proxy = await make_proxy(medplum_base, auth=_policy())
    mine, other = seeds.build(sizes={"Observation": 3}, shared=False), seeds.build(sizes={"Observation": 3}, shared=False)
    seeds.write(medplum_base, mine.resources + other.resources)
    before = seeds.snapshot(medplum_base, other.in_scope + other.untouchable + mine.untouchable)

    for bearer in (token(scope=SCOPE, patient=mine.patient), token(scope=SCOPE),
                   token(scope=SCOPE, patient=[other.patient]), token(scope=SCOPE, patient="")):
        refused = await _purge(proxy, other.patient, bearer)
        assert refused.status_code == 403, refused.text
        assert "own patient" in refused.json()["issue"][0]["diagnostics"]
    assert seeds.snapshot(medplum_base, other.in_scope + other.untouchable + mine.untouchable) == before

    done = await _purge(proxy, mine.patient, token(scope=SCOPE, patient=mine.patient))
    assert done.status_code == 200, done.text
    assert seeds.present(medplum_base, mine.in_scope) == []
    assert seeds.snapshot(medplum_base, other.in_scope + other.untouchable + mine.untouchable) == before


async def test_a_patient_scope_sees_only_its_own_patients_jobs(make_proxy: Any, medplum_base: str) -> None:
    proxy = await make_proxy(medplum_base, auth=_policy(), jobs={"workers": 0})
    theirs = await _purge(proxy, "patient-b", TOKEN, prefer="respond-async")
    assert theirs.status_code == 202, theirs.text
    url = theirs.headers["Content-Location"]
    mine = token(scope=SCOPE, patient="patient-a")
    async with httpx.AsyncClient(timeout=60) as http:
        for method in ("GET", "DELETE"):
            answer = await http.request(method, url, headers={"Authorization": f"Bearer {mine}"})
            assert answer.status_code == 403, answer.text
        assert (await http.get(url, headers=AUTH)).status_code == 202  # still queued, not cancelled
        own = await _purge(proxy, "patient-a", mine, prefer="respond-async")
        assert own.status_code == 202, own.text
        assert (await http.get(own.headers["Content-Location"],
                               headers={"Authorization": f"Bearer {mine}"})).status_code == 202


async def test_a_broad_scope_is_not_narrowed(make_proxy: Any, medplum_base: str) -> None:
    proxy = await make_proxy(medplum_base, auth={**_policy(), "scopes": {"$purge": [SCOPE, "system/Patient.$purge"]}})
    answer = await _purge(proxy, "nobody-" + seeds.new_tag(), token(scope=f"{SCOPE} system/Patient.$purge",
                                                                     patient="someone-else"))
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("operation, scope", [("$erase", "patient/Patient.$erase"),
                                              ("$expunge", "patient/*.$expunge"),
                                              ("cascade-delete", "patient/Observation.cascade-delete"),
                                              ("$delete-expunge", "patient/*.$delete-expunge")])
def test_patient_scopes_for_other_operations_are_refused_at_load(operation: str, scope: str) -> None:
    with pytest.raises(ConfigError, match="patient/"):
        parse_config({"upstream": {"url": "http://u/fhir"}, "auth": {"scopes": {operation: [scope]}}})


async def test_introspected_tokens_carry_their_patient_too(make_proxy, upstream, issuer, monkeypatch) -> None:
    policy = {**introspection_policy(issuer, monkeypatch), "scopes": {"$purge": [SCOPE]}}
    proxy = await make_proxy(BASE, auth=policy)
    log_capture.register_secret("opaque-p1", "opaque-p2", "opaque-none")
    issuer["active"] = {name: {"active": True, "sub": "app", "aud": AUDIENCE, "scope": SCOPE, **extra}
                        for name, extra in [("opaque-p1", {"patient": "p1"}), ("opaque-p2", {"patient": "p2"}),
                                            ("opaque-none", {})]}
    assert (await purge(proxy, "opaque-p1")).status_code == 200  # Patient/p1/$purge?dryRun=true
    for other in ("opaque-p2", "opaque-none"):
        assert (await purge(proxy, other)).status_code == 403
    assert not writes(upstream)
