"""Proof of erasure against real upstreams: signed receipts, the hash-chained ledger, and
re-applying erasures after the upstream's data was restored."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from purgeproxy.cli import main
from purgeproxy.receipts.receipt import covers, find_token, verify
from tests import seed as seeds
from tests.helpers import AUTH, TOKEN, purge, texts, until_done

SIZES = {"Encounter": 2, "Observation": 6, "DiagnosticReport": 1}


def receipt_of(answer: dict[str, Any]) -> tuple[str, str]:
    """(compact JWS, salt) from an operation's OperationOutcome."""
    extensions = [ext for issue in answer["issue"] for ext in issue.get("extension", [])]
    token = next(e["valueString"] for e in extensions if e["url"].endswith(":receipt"))
    salt = next(e["valueString"] for e in extensions if e["url"].endswith(":receipt-salt"))
    return token, salt


async def keys_of(proxy: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{proxy}/$receipt-keys")  # public: no token needed
    assert answer.status_code == 200
    assert all("d" not in key for key in answer.json()["keys"])  # never a private part
    jwks: dict[str, Any] = answer.json()
    return jwks


async def cli(*argv: str) -> int:
    """The command line, in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(main, list(argv))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "jobs.sqlite3"


def config_file(tmp_path: Path, upstream: str, store: Path) -> Path:
    path = tmp_path / f"{uuid.uuid4().hex}.yaml"
    path.write_text(yaml.safe_dump({"upstream": {"url": upstream}, "jobs": {"store": str(store)},
                                    "auth": {"admin_token": TOKEN}}))
    return path


async def erase(proxy: str, rtype: str, rid: str, reason: str) -> dict[str, Any]:
    body = {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": reason}]}
    async with httpx.AsyncClient(timeout=120) as http:
        answer = await http.post(f"{proxy}/{rtype}/{rid}/$erase", json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    return document


async def test_purge_and_erase_receipts_verify_and_tampering_is_detected(
        make_proxy: Any, upstream: tuple[str, str], tmp_path: Path, store: Path, capsys: Any) -> None:
    kind, base = upstream
    seed = seeds.build(sizes=SIZES, shared=False)
    lone = {"resourceType": "Basic", "id": f"{seed.patient}-basic", "code": {"text": "erase me"}}
    seeds.write(base, [*seed.resources, lone])
    before = seeds.snapshot(base, seed.untouchable)
    proxy = await make_proxy(base, auth={"admin_token": TOKEN}, jobs={"store": str(store)})

    status, outcome = await purge(proxy, seed.patient, query="?reason=" + "Art.%2017%20request%2042")
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    token, salt = receipt_of(outcome)
    jwks = await keys_of(proxy)
    claims = verify(token, jwks)
    assert claims["operation"] == "$purge" and claims["reason"] == "Art. 17 request 42"
    assert claims["verdict"] == "success" and claims["upstream"] == base
    assert claims["requester"] and claims["time"].startswith(str(datetime.now(UTC).year))
    assert claims["manifest"]["count"] == len(seed.in_scope) == sum(claims["counts"].values())
    assert claims["counts"]["Observation"] == SIZES["Observation"]
    assert all(covers(claims, f"{t}/{i}", salt) for t, i in seed.in_scope)
    assert not covers(claims, f"Patient/{seed.control}", salt)
    assert not covers(claims, f"Patient/{seed.patient}", "another salt")
    payload = json.dumps(claims)
    assert seed.patient not in payload and seed.control not in payload  # no id in clear

    erased = await erase(proxy, "Basic", lone["id"], "duplicate record")
    assert erased["issue"][0]["code"] == "success", texts(erased)
    erase_token, erase_salt = receipt_of(erased)
    erase_claims = verify(erase_token, jwks)
    assert erase_claims["operation"] == "$erase" and erase_claims["reason"] == "duplicate record"
    assert covers(erase_claims, f"Basic/{lone['id']}", erase_salt) and erase_claims["counts"] == {"Basic": 1}

    async with httpx.AsyncClient() as http:  # the receipt by id: authorized like a job's status
        refused = await http.get(f"{proxy}/$receipt/{claims['jti']}")
        fetched = await http.get(f"{proxy}/$receipt/{claims['jti']}", headers=AUTH)
        unknown = await http.get(f"{proxy}/$receipt/nope", headers=AUTH)
    assert refused.status_code == 401 and unknown.status_code == 404
    assert find_token(fetched.text) == token

    keys_file, receipt_file = tmp_path / "keys.json", tmp_path / "receipt.json"
    keys_file.write_text(json.dumps(jwks))
    receipt_file.write_text(fetched.text)
    assert await cli("receipt", "verify", str(receipt_file), "--keys", str(keys_file),
                     "--covers", f"Observation/{seed.patient}-obs0", "--salt", salt) == 0
    assert await cli("receipt", "verify", str(receipt_file), "--proxy", proxy,
                     "--covers", f"Patient/{seed.control}", "--salt", salt) == 1
    header, body, signature = token.split(".")
    forged = json.loads(_unb64(body)) | {"reason": "routine clean-up"}
    (tmp_path / "forged.jws").write_text(".".join([header, _b64(json.dumps(forged)), signature]))
    assert await cli("receipt", "verify", str(tmp_path / "forged.jws"), "--keys", str(keys_file)) == 1
    output = capsys.readouterr().out
    assert "VALID: receipt" in output and "COVERED: Observation/" in output
    assert "NOT COVERED: Patient/" in output and "INVALID: the signature" in output

    config = config_file(tmp_path, base, store)
    assert await cli("ledger", "verify", "--config", str(config)) == 0
    assert "INTACT: 2 ledger entries" in capsys.readouterr().out
    with sqlite3.connect(store) as db:  # drop one digest from the first entry's manifest
        manifest = json.loads(db.execute("SELECT manifest FROM purgeproxy_ledger WHERE seq = 1").fetchone()[0])
        db.execute("UPDATE purgeproxy_ledger SET manifest = ? WHERE seq = 1", (json.dumps(manifest[1:]),))
    assert await cli("ledger", "verify", "--config", str(config)) == 1
    assert "BROKEN: entry 1" in capsys.readouterr().out
    with sqlite3.connect(store) as db:  # restore it, then remove the entry altogether
        db.execute("UPDATE purgeproxy_ledger SET manifest = ? WHERE seq = 1", (json.dumps(manifest),))
    assert await cli("ledger", "verify", "--config", str(config)) == 0
    with sqlite3.connect(store) as db:
        db.execute("DELETE FROM purgeproxy_ledger WHERE seq = 1")
    assert await cli("ledger", "verify", "--config", str(config)) == 1
    assert "entries 1 to 1 are missing" in capsys.readouterr().out
    assert seeds.snapshot(base, seed.untouchable) == before, kind


async def test_reapply_after_a_restore_removes_what_came_back(
        make_proxy: Any, upstream: tuple[str, str], tmp_path: Path, store: Path, capsys: Any) -> None:
    kind, base = upstream
    seed = seeds.build(sizes=SIZES, shared=False)
    lone = {"resourceType": "Basic", "id": f"{seed.patient}-basic", "code": {"text": "erase me"}}
    seeds.write(base, [*seed.resources, lone])
    before = seeds.snapshot(base, seed.untouchable)
    proxy = await make_proxy(base, auth={"admin_token": TOKEN}, jobs={"store": str(store)})
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    status, outcome = await purge(proxy, seed.patient)
    assert status == 200 and outcome["issue"][0]["code"] == "success", texts(outcome)
    await erase(proxy, "Basic", lone["id"], "duplicate record")
    assert seeds.present(base, [*seed.in_scope, ("Basic", lone["id"])]) == []

    # the backup restore: the same resources written back
    erased = [r for r in seed.resources if (r["resourceType"], r["id"]) in seed.in_scope]
    seeds.write(base, [*erased, lone])
    assert len(seeds.present(base, [*seed.in_scope, ("Basic", lone["id"])])) == len(seed.in_scope) + 1

    config = config_file(tmp_path, base, store)
    assert await cli("reapply", "--config", str(config), "--since", since, "--dry-run") == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["issue"][0]["code"] == "informational", texts(dry)
    assert len(seeds.present(base, seed.in_scope)) == len(seed.in_scope)  # a dry run deletes nothing

    assert await cli("reapply", "--config", str(config), "--since", since) == 0
    report = json.loads(capsys.readouterr().out)
    came_back = len(seed.in_scope) + 1
    assert report["issue"][0]["code"] == "success", texts(report)
    assert f"{came_back} erased resource(s) had come back and were removed again" in texts(report)
    assert f"$purge of Patient/{seed.patient}" in texts(report)
    assert f"{len(seed.in_scope)} erased resource(s) had come back (DiagnosticReport: 1, Encounter: 2, " \
           f"Observation: 6, Patient: 1)" in texts(report)
    assert f"$erase of Basic/{lone['id']}" in texts(report)
    assert seeds.present(base, [*seed.in_scope, ("Basic", lone["id"])]) == []
    assert seeds.snapshot(base, seed.untouchable) == before, kind
    # each re-run got its own receipt, chained after the first two
    assert await cli("ledger", "verify", "--config", str(config)) == 0
    assert "INTACT: 4 ledger entries" in capsys.readouterr().out

    async with httpx.AsyncClient(timeout=60) as http:  # the same, as an asynchronous operation
        kicked = await http.post(f"{proxy}/$reapply", params={"since": since}, headers=AUTH)
        assert kicked.status_code == 202, kicked.text
        polled = await until_done(http, kicked.headers["Content-Location"], pause=0.5)
    assert polled.status_code == 200, polled.text
    answer = polled.json()["entry"][0]["response"]["outcome"]
    assert "0 erased resource(s) had come back" in texts(answer), texts(answer)
    assert seeds.snapshot(base, seed.untouchable) == before, kind


def _b64(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def _unb64(text: str) -> str:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


async def test_a_cascade_gets_its_receipt_and_reapply_is_authorized(
        make_proxy: Any, upstream: tuple[str, str], store: Path) -> None:
    kind, base = upstream
    tag = seeds.new_tag()
    target = {"resourceType": "Basic", "id": f"{tag}-b", "code": {"text": "target"}}
    referrer = {"resourceType": "Basic", "id": f"{tag}-r", "code": {"text": "referrer"},
                "subject": {"reference": f"Basic/{tag}-b"}}
    seeds.write(base, [target, referrer])
    tokens = [{"name": "dpo", "sha256": hashlib.sha256(b"dpo-token").hexdigest(),
               "operations": ["$purge", "cascade-delete"]},
              {"name": "purger", "sha256": hashlib.sha256(b"purger-token").hexdigest(), "operations": ["$purge"]}]
    proxy = await make_proxy(base, auth={"admin_token": TOKEN, "tokens": tokens}, jobs={"store": str(store)})
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    async with httpx.AsyncClient(timeout=120) as http:
        answer = await http.delete(f"{proxy}/Basic/{tag}-b", params={"_cascade": "delete", "_reason": "test data"},
                                   headers=AUTH)
        assert answer.status_code == 200 and answer.json()["issue"][0]["code"] == "success", answer.text
        token, salt = receipt_of(answer.json())
        claims = verify(token, await keys_of(proxy))
        assert claims["operation"] == "cascade-delete" and claims["reason"] == "test data"
        assert covers(claims, f"Basic/{tag}-r", salt) and claims["counts"] == {"Basic": 2}
        refused = await http.post(f"{proxy}/$reapply", params={"since": "2020-01-01"})
        invalid = await http.post(f"{proxy}/$reapply", params={"since": "last week"}, headers=AUTH)
        missing = await http.post(f"{proxy}/$reapply", headers=AUTH)
        # re-running a cascade needs cascade-delete too; the job's status is authorized as $purge
        purger = await http.post(f"{proxy}/$reapply", params={"since": since},
                                 headers={"Authorization": "Bearer purger-token"})
        dpo = {"Authorization": "Bearer dpo-token"}
        kicked = await http.post(f"{proxy}/$reapply", params={"since": since, "dryRun": "true"}, headers=dpo)
        assert kicked.status_code == 202, kicked.text
        polled = await until_done(http, kicked.headers["Content-Location"], headers=dpo, pause=0.5)
    assert refused.status_code == 401 and invalid.status_code == 400 and missing.status_code == 400, kind
    assert purger.status_code == 403 and "cascade-delete" in purger.text
    assert polled.status_code == 200, polled.text
    report = polled.json()["entry"][0]["response"]["outcome"]
    assert report["issue"][0]["code"] == "informational", texts(report)
    assert f"cascade-delete of Basic/{tag}-b" in texts(report) and "0 erased resource(s) had come back" in texts(report)
    assert seeds.present(base, [("Basic", f"{tag}-b"), ("Basic", f"{tag}-r")]) == []
