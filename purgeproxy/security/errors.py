"""Refusals of the authorization layer, shaped for an OperationOutcome and RFC 6750 headers."""

from __future__ import annotations

from purgeproxy.fhir.outcome import OutcomeError


class Denied(OutcomeError):
    """401 no or bad credentials; 403 not allowed; 429 too many; 503 issuer unreachable.

    ``text`` never quotes the token. ``challenge`` is the RFC 6750 error (``invalid_token``,
    ``insufficient_scope``) for the ``WWW-Authenticate`` header; ``retry_after`` in seconds.
    """

    def __init__(self, status: int, text: str, code: str = "forbidden", challenge: str | None = None,
                 retry_after: int | None = None) -> None:
        headers = {}
        if status == 401 or challenge:
            error = f', error="{challenge}"' if challenge else ""
            headers["WWW-Authenticate"] = f'Bearer realm="purgeproxy"{error}'
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        super().__init__(status, code, text, headers=headers)


def invalid_token(text: str) -> Denied:
    return Denied(401, text, code="login", challenge="invalid_token")
