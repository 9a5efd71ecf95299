"""What a valid configuration may still get wrong: secrets written into the file, and settings
that weaken the proxy's safety. Warnings, not errors: each has a legitimate use (a demo, a test
upstream), but an operator should see them before the proxy runs with them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from purgeproxy.config import Config

_SECRET_NAME = re.compile(r"(^|_)(token|secret|password|passwd|api_key)$", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://[^/@:\s]*:[^/@\s]+@")
_ENV_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}")
_ANYONE = {"0.0.0.0/0", "::/0"}


def literal_secrets(raw: Any, where: str = "") -> Iterator[str]:
    """Keys of the file (before ``${VAR}`` expansion) whose secret is written in it: a key named
    like a secret holding text, or a URL with a password. ``${VAR}``, ``{env: …}`` and
    ``{file: …}`` are the ways to give one; an empty value is none."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            path = f"{where}.{key}" if where else str(key)
            if isinstance(value, str) and value and not _ENV_REFERENCE.fullmatch(value.strip()):
                if _SECRET_NAME.search(str(key)):
                    yield (f"{path}: a secret is written in the file; give it as ${{VAR}} from the environment "
                           "(or {env: VAR} / {file: PATH} where the key takes one)")
                elif _URL_PASSWORD.match(value) and not _ENV_REFERENCE.search(value.split("@")[0]):
                    yield f"{path}: the URL holds a password; put the whole URL in an environment variable (${{VAR}})"
            else:
                yield from literal_secrets(value, path)
    elif isinstance(raw, list):
        for index, value in enumerate(raw):
            yield from literal_secrets(value, f"{where}.{index}")


def weakened_safety(config: Config) -> Iterator[str]:
    """Settings that let more be deleted, by more callers, or let someone pose as the upstream."""
    if config.auth.insecure_allow_all:
        yield "auth.insecure_allow_all: anyone who reaches the proxy may run every destructive operation"
    if config.expunge.allow_everything:
        yield "expunge.allow_everything: a system-level $expunge with expungeEverything empties the whole server"
    if not config.upstream.tls.verify:
        yield "upstream.tls.verify: the upstream's certificate is not checked; anyone on the path can pose as it"
    if config.purge.shared == "delete":
        yield "purge.shared: resources also in other patients' compartments are deleted with the patient"
    if _ANYONE.intersection(str(network) for network in config.server.trusted_proxies):
        yield "server.trusted_proxies: every address is trusted, so any client can forge X-Forwarded-*"
    if config.upstream.url.startswith("http://") and config.upstream.auth.type != "none":
        yield "upstream.auth: the proxy's upstream credentials are sent over plain http://"
    authorized = (config.auth.admin_token.get_secret_value() or config.auth.tokens or config.auth.jwt
                  or config.auth.introspection or config.auth.insecure_allow_all)
    if not config.safety.read_only and not authorized:
        yield ("safety.read_only: false, but no caller is authorized (auth is empty): every destructive "
               "operation is refused; set safety.read_only: true to say so, or configure auth")


def config_warnings(raw: Any, config: Config) -> list[str]:
    """Every warning for the file's document ``raw`` and the configuration it gave."""
    return [*literal_secrets(raw), *weakened_safety(config)]
