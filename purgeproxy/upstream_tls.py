"""The TLS the proxy speaks to its upstream: one ``ssl.SSLContext`` for both of its HTTP clients.

The pass-through (aiohttp) and the proxy's own FHIR calls (httpx) used to trust different CA
stores (the system's, and certifi's): an upstream with a private CA passed one and failed the
other. Both now get the context made here from ``upstream.tls``: the CA bundle to trust (default:
the system's), the client certificate for mutual TLS, and whether to verify at all.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from purgeproxy.config import UpstreamTls

UPSTREAM_TLS = "the upstream FHIR server's TLS certificate was not accepted, or it refused the proxy's (see upstream.tls)"


def ssl_context(settings: UpstreamTls) -> ssl.SSLContext:
    """The context both clients use; a file that cannot be loaded raises ``ssl.SSLError`` or
    ``OSError`` (the configuration checks it, so ``serve`` never gets that far)."""
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if not settings.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.cert_file is not None:
        context.load_cert_chain(str(settings.cert_file), str(settings.key_file) if settings.key_file else None)
    return context


def is_tls_failure(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it, as the clients wrap it) is a TLS failure: a
    certificate refused either way, or a handshake that did not complete."""
    seen: BaseException | None = error
    for _ in range(8):  # the chain is short; a bound rather than trust in its shape
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
