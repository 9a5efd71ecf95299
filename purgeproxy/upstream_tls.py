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


UPSTREAM_TLS_DROPPED = ("the upstream FHIR server closed the TLS connection before answering (a server that "
                        "requires a client certificate does so when it refuses the proxy's: see upstream.tls)")


def tls_failure(error: BaseException, https: bool, disconnected: bool = False) -> str | None:
    """The diagnostics for ``error`` when it is a TLS failure, else None.

    A certificate refused by the proxy, or a handshake alert, is certain (``UPSTREAM_TLS``). A
    server refusing the proxy's client certificate is not always seen as one: in TLS 1.3 it decides
    after the client's handshake is done and often resets the connection before its alert is
    read, so an https connection closed before any answer (``disconnected``, a reset, an EOF in the
    handshake) is reported as possibly that (``UPSTREAM_TLS_DROPPED``)."""
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and len(chain) < 8:  # the chain is short; a bound rather than trust in its shape
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(isinstance(each, ssl.SSLError) and not isinstance(each, ssl.SSLEOFError) for each in chain):
        return UPSTREAM_TLS
    if https and (disconnected or any(isinstance(each, ConnectionResetError | ssl.SSLEOFError) for each in chain)):
        return UPSTREAM_TLS_DROPPED
    return None
