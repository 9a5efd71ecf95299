"""TLS to the upstream with a private CA and mutual TLS: the pass-through and the proxy's own
FHIR calls (a purge) reach it only when ``upstream.tls`` names the CA and the client certificate,
and refuse otherwise with one clear error (nothing is deleted then).

The upstream is the real Medplum engine behind a small HTTPS front that demands a client
certificate signed by the test's CA and forwards everything to the engine."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web

from purgeproxy.config import ConfigError, parse_config
from purgeproxy.upstream_tls import UPSTREAM_TLS, UPSTREAM_TLS_DROPPED
from tests import seed as seeds
from tests.helpers import TOKEN, purge, texts
from tests.pki import Pki, make_pki

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def tls_front(medplum_base: str, pki: Pki) -> AsyncIterator[str]:
    """https://127.0.0.1:PORT/fhir, served with the CA's server certificate, requiring a client
    certificate from the same CA, forwarding to Medplum (its own base rewritten to the front's)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    context.verify_mode = ssl.CERT_REQUIRED
    session = aiohttp.ClientSession(auto_decompress=True)
    front: dict[str, str] = {}

    async def forward(request: web.Request) -> web.Response:
        url = medplum_base + request.path_qs.removeprefix("/fhir")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with session.request(request.method, url, headers=headers, data=await request.read()) as answer:
            body = (await answer.read()).replace(medplum_base.encode(), front["base"].encode())
            kept = {k: v.replace(medplum_base, front["base"]) for k, v in answer.headers.items()
                    if k.lower() not in HOP_BY_HOP}
            return web.Response(status=answer.status, body=body, headers=kept)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    front["base"] = f"https://127.0.0.1:{port}/fhir"
    yield front["base"]
    await runner.cleanup()
    await session.close()


def _tls(pki: Pki, ca: bool = True, client: bool = True, **more: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {**more}
    if ca:
        settings["ca_file"] = str(pki.ca)
    if client:
        settings.update(cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    return settings


async def _read_patient(proxy: str, patient: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.get(f"{proxy}/Patient/{patient}")


async def test_private_ca_and_client_certificate_reach_the_upstream(
        make_proxy: Any, tls_front: str, medplum_base: str, pki: Pki) -> None:
    seed = seeds.build(sizes={"Observation": 5}, shared=False)
    seeds.write(medplum_base, seed.resources)
    before = seeds.snapshot(medplum_base, seed.untouchable)
    proxy = await make_proxy(tls_front, upstream={"url": tls_front, "tls": _tls(pki)}, auth={"admin_token": TOKEN})

    read = await _read_patient(proxy, seed.patient)  # the pass-through (aiohttp)
    assert read.status_code == 200, read.text
    assert read.json()["id"] == seed.patient

    status, outcome = await purge(proxy, seed.patient)  # the proxy's own calls (httpx)
    assert status == 200, texts(outcome)
    assert outcome["issue"][0]["code"] == "success", texts(outcome)
    assert seeds.present(medplum_base, seed.in_scope) == []
    assert seeds.snapshot(medplum_base, seed.untouchable) == before


@pytest.mark.parametrize(("tls", "said"), [
    pytest.param({"client": True, "ca": False}, UPSTREAM_TLS, id="system-store-does-not-know-the-ca"),
    pytest.param({"client": True, "ca": True, "other_ca": True}, UPSTREAM_TLS, id="another-ca"),
    # TLS 1.3: the front refuses after the proxy's handshake is done and resets the connection
    pytest.param({"client": False, "ca": True}, UPSTREAM_TLS_DROPPED, id="no-client-certificate"),
])
async def test_without_the_ca_or_the_client_certificate_both_clients_refuse(
        make_proxy: Any, tls_front: str, medplum_base: str, pki: Pki, tmp_path: Path, tls: dict[str, bool],
        said: str) -> None:
    seed = seeds.build(sizes={"Observation": 2}, shared=False)
    seeds.write(medplum_base, seed.resources)
    settings = _tls(pki, ca=tls["ca"], client=tls["client"])
    if tls.get("other_ca"):
        settings["ca_file"] = str(make_pki(tmp_path / "other", "other").ca)
    proxy = await make_proxy(tls_front, upstream={"url": tls_front, "tls": settings}, auth={"admin_token": TOKEN})

    read = await _read_patient(proxy, seed.patient)
    assert read.status_code == 502
    assert read.json()["issue"][0]["diagnostics"] == said

    status, outcome = await purge(proxy, seed.patient)
    assert status == 502, texts(outcome)
    assert texts(outcome) == said
    assert sorted(seeds.present(medplum_base, seed.in_scope)) == sorted(seed.in_scope)  # nothing deleted


async def test_verify_off_still_presents_the_client_certificate(
        make_proxy: Any, tls_front: str, medplum_base: str, pki: Pki) -> None:
    seed = seeds.build(sizes={"Observation": 1}, shared=False)
    seeds.write(medplum_base, seed.resources)
    proxy = await make_proxy(tls_front, upstream={"url": tls_front, "tls": _tls(pki, ca=False, verify=False)})
    read = await _read_patient(proxy, seed.patient)
    assert read.status_code == 200, read.text


def test_unloadable_certificate_files_are_config_errors(tmp_path: Path, pki: Pki) -> None:
    garbage = tmp_path / "not-a-cert.pem"
    garbage.write_text("not a certificate\n")
    for settings, message in [
        ({"ca_file": str(garbage)}, "upstream.tls: cannot load the CA bundle or client certificate"),
        ({"cert_file": str(pki.client_cert)}, "upstream.tls: cannot load"),  # its key is in another file
        ({"key_file": str(pki.client_key)}, "upstream.tls: key_file needs cert_file"),
    ]:
        with pytest.raises(ConfigError) as raised:
            parse_config({"upstream": {"url": "https://u/fhir", "tls": settings}})
        assert raised.value.problems[0].startswith(message), raised.value.problems
