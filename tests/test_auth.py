"""Who may purge: real signed JWTs against a JWKS served on 127.0.0.1, RFC 7662 introspection,
static tokens, the default-deny and insecure switches. Every refusal leaves the upstream alone."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator

import jwt
import pytest
import respx

from tests import log_capture
from tests.fake_upstream import BASE, scripted_upstream, upstream_calls, writes
from tests.jwt_tokens import (
    AUDIENCE,
    ISSUER,
    OTHER_KEY,
    SIGNING_KEY,
    introspection_policy,
    jwt_policy,
    public_jwk,
    purge,
    token,
    unsigned,
)


@pytest.fixture
def upstream() -> Iterator[respx.MockRouter]:
    yield from scripted_upstream()


async def test_a_valid_jwt_may_purge_and_is_named_in_the_audit_log(make_proxy, upstream, issuer) -> None:
    proxy = await make_proxy(BASE, auth=jwt_policy(issuer))
    since = len(log_capture.LINES)
    answer = await purge(proxy, token(), query="")
    assert answer.status_code == 200, answer.text
    audit = [json.loads(line) for line in log_capture.LINES[since:] if '"audit"' in line]
    assert audit and audit[0]["caller"] == "jwt:svc-42"
    assert writes(upstream)


JWT_REFUSALS = [
    # (id, token factory, status, text fragment)
    ("expired", lambda: token(exp=int(time.time()) - 120), 401, "expired"),
    ("not-yet-valid", lambda: token(nbf=int(time.time()) + 600), 401, "not valid yet"),
    ("wrong-issuer", lambda: token(iss="https://elsewhere.test"), 401, "another issuer"),
    ("wrong-audience", lambda: token(aud="https://other-proxy.test"), 401, "another audience"),
    ("no-audience", lambda: token(aud=None), 401, "required claim"),
    ("wrong-signature", lambda: token(key=OTHER_KEY), 401, "signature does not verify"),
    ("unknown-kid", lambda: token(kid="rotated-away"), 401, "signing key is not known"),
    ("alg-none", lambda: unsigned(), 401, "algorithm is not accepted"),
    ("alg-hs256", lambda: jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60,
                                       "scope": "system/Patient.$purge"}, "x" * 32, algorithm="HS256"),
     401, "algorithm is not accepted"),
    ("garbage", lambda: "not.a.jwt", 401, "well-formed"),
    ("missing-scope", lambda: token(scope="system/*.* user/Patient.read"), 403, "lacks a scope for $purge"),
    ("no-scope-claim", lambda: token(scope=None), 403, "lacks a scope"),
]


@pytest.mark.parametrize(("make_token", "status", "text"), [c[1:] for c in JWT_REFUSALS],
                         ids=[c[0] for c in JWT_REFUSALS])
async def test_bad_jwts_are_refused_before_any_upstream_call(make_proxy, upstream, issuer, make_token, status, text) -> None:
    proxy = await make_proxy(BASE, auth=jwt_policy(issuer))
    answer = await purge(proxy, make_token())
    outcome = answer.json()
    assert answer.status_code == status
    assert outcome["resourceType"] == "OperationOutcome" and text in outcome["issue"][0]["diagnostics"]
    challenge = answer.headers.get("WWW-Authenticate", "")
    assert ('error="invalid_token"' if status == 401 else 'error="insufficient_scope"') in challenge
    assert upstream_calls(upstream) == []


@pytest.mark.parametrize("scope", ["user/Patient.$purge", "system/kodjin/$patient-purge",
                                   "http://server.fire.ly/auth/scope/purge-operation"])
async def test_smart_user_and_vendor_scopes_are_accepted(make_proxy, upstream, issuer, scope) -> None:
    proxy = await make_proxy(BASE, auth=jwt_policy(issuer))
    assert (await purge(proxy, token(scope=f"patient/*.read {scope}"))).status_code == 200


async def test_configured_scopes_replace_the_defaults(make_proxy, upstream, issuer) -> None:
    proxy = await make_proxy(BASE, auth={**jwt_policy(issuer), "scopes": {"$purge": ["purge:all"]}})
    assert (await purge(proxy, token(scp=["purge:all"], scope=None))).status_code == 200
    assert (await purge(proxy, token())).status_code == 403


async def test_configured_keys_need_no_jwks_url(make_proxy, upstream) -> None:
    proxy = await make_proxy(BASE, auth={"jwt": {"issuer": ISSUER, "audience": AUDIENCE,
                                                 "keys": [public_jwk(SIGNING_KEY, "k1")]}})
    assert (await purge(proxy, token())).status_code == 200
    assert (await purge(proxy, token(key=OTHER_KEY))).status_code == 401


async def test_the_jwks_is_fetched_once_and_cached(make_proxy, upstream, issuer) -> None:
    proxy = await make_proxy(BASE, auth=jwt_policy(issuer))
    for _ in range(3):
        assert (await purge(proxy, token())).status_code == 200
    assert issuer["jwks_calls"] == 1


async def test_an_unreachable_jwks_is_a_503_not_a_pass(make_proxy, upstream) -> None:
    proxy = await make_proxy(BASE, auth={"jwt": {"issuer": ISSUER, "audience": AUDIENCE,
                                                 "jwks_url": "http://127.0.0.1:9/jwks.json"}})
    answer = await purge(proxy, token())
    assert answer.status_code == 503 and upstream_calls(upstream) == []


async def test_introspection_accepts_active_tokens_with_the_scope(make_proxy, upstream, issuer, monkeypatch) -> None:
    proxy = await make_proxy(BASE, auth=introspection_policy(issuer, monkeypatch))
    log_capture.register_secret("opaque-good", "opaque-no-scope", "opaque-other-aud")
    issuer["active"] = {
        "opaque-good": {"active": True, "sub": "alice", "client_id": "dpo-app", "aud": AUDIENCE,
                        "scope": "user/Patient.$purge", "exp": time.time() + 60},
        "opaque-no-scope": {"active": True, "sub": "bob", "aud": AUDIENCE, "scope": "user/Patient.read"},
        "opaque-other-aud": {"active": True, "sub": "eve", "aud": "elsewhere", "scope": "user/Patient.$purge"},
    }
    assert (await purge(proxy, "opaque-good")).status_code == 200
    assert (await purge(proxy, "opaque-no-scope")).status_code == 403
    assert (await purge(proxy, "opaque-other-aud")).status_code == 401
    assert (await purge(proxy, "opaque-revoked")).status_code == 401


STATIC_SECRET = "static-dpo-token-0123456789"


async def test_static_tokens_by_hash_and_from_the_environment(make_proxy, upstream, monkeypatch) -> None:
    monkeypatch.setenv("TEST_ERASE_TOKEN", "erase-only-token")
    log_capture.register_secret(STATIC_SECRET, "erase-only-token")
    proxy = await make_proxy(BASE, auth={"tokens": [
        {"name": "dpo", "sha256": hashlib.sha256(STATIC_SECRET.encode()).hexdigest(), "operations": ["$purge"]},
        {"name": "eraser", "token": {"env": "TEST_ERASE_TOKEN"}, "operations": ["$erase"]},
    ]})
    assert (await purge(proxy, STATIC_SECRET)).status_code == 200
    refused = await purge(proxy, "erase-only-token")
    assert refused.status_code == 403 and "may not run $purge" in refused.json()["issue"][0]["diagnostics"]
    assert (await purge(proxy, None)).status_code == 401


async def test_insecure_allow_all_lets_anyone_in_and_warns(make_proxy, upstream) -> None:
    since = len(log_capture.LINES)
    proxy = await make_proxy(BASE, auth={"insecure_allow_all": True})
    assert (await purge(proxy, None)).status_code == 200
    assert any('"insecure_allow_all"' in line and '"warning"' in line for line in log_capture.LINES[since:])


async def test_read_only_refuses_even_the_admin(make_proxy, upstream) -> None:
    proxy = await make_proxy(BASE, auth={"admin_token": "requests-token"}, safety={"read_only": True})
    answer = await purge(proxy, "requests-token", query="")
    assert answer.status_code == 403 and "read-only" in answer.json()["issue"][0]["diagnostics"]
    assert upstream_calls(upstream) == []
