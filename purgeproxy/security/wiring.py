"""Start-up of the authorization layer: its HTTP client and the start-up warnings.

The JWKS, introspection and OAuth token endpoints get their own httpx client, apart from the
upstream one, so that the proxy's upstream credentials can never be sent to them (or theirs to
the upstream).
"""

from __future__ import annotations

import httpx

from purgeproxy.config import Config
from purgeproxy.logs import get_logger
from purgeproxy.security.authorizer import Authorizer

log = get_logger("purgeproxy.auth")


def auth_http_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0), follow_redirects=False)


def make_authorizer(config: Config, http: httpx.AsyncClient) -> Authorizer:
    """The authorizer, announcing at every start what it allows (never with a secret)."""
    authorizer = Authorizer(config.auth, http)
    if config.auth.insecure_allow_all:
        log.warning("insecure_allow_all", detail="anyone may run every destructive operation: "
                    "auth.insecure_allow_all is for local demos only")
    elif not authorizer.configured:
        log.warning("destructive_operations_disabled", detail="no authorization policy is configured")
    if config.safety.read_only:
        log.warning("read_only", detail="safety.read_only: every destructive operation is refused")
    log.info("authorization", static_tokens=len(authorizer.static), jwt=authorizer.jwt is not None,
             introspection=authorizer.introspection is not None,
             upstream_auth=config.upstream.auth.type)
    return authorizer
