"""Configuration: the YAML file, validated once at start-up.

Validation lives in pydantic models so that a wrong key, type or value is caught before the proxy
binds its port, and reported as one line naming the key (``ConfigError``), never as a traceback.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from purgeproxy.fhir.definitions import known_resource_types, type_name_problem
from purgeproxy.fhir.search import MAX_COUNT
from purgeproxy.servers.registry import KIND_NAMES

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """Configuration mistakes, each phrased for the operator in one line (``problems``); its text
    joins them with "; " so that it stays one line wherever it is printed whole."""

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(problems))


class _Strict(BaseModel):
    """Unknown keys are mistakes: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    connect: float = Field(5.0, gt=0, description="seconds to open a connection to the upstream")
    read: float = Field(120.0, gt=0, description="seconds the upstream may stay silent mid-answer")


class Pool(_Strict):
    max_connections: int = Field(200, ge=1, description="upstream connections kept open at most")
    keepalive_seconds: float = Field(30.0, ge=0)


class UpstreamTls(_Strict):
    """How the proxy's two upstream clients (pass-through and its own FHIR calls) check the
    upstream's certificate and prove their own: one setting, so they never trust different CAs."""

    ca_file: Path | None = Field(None, description="PEM CA bundle to trust instead of the system's")
    cert_file: Path | None = Field(None, description="PEM client certificate for mutual TLS")
    key_file: Path | None = Field(None, description="PEM private key of cert_file (default: in cert_file)")
    verify: bool = Field(True, description="false: accept any certificate (tests only: anyone can pose as the upstream)")

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {value} does not exist")
        return value

    @model_validator(mode="after")
    def _loadable(self) -> UpstreamTls:
        """Loaded now, so that a wrong file is a config error, not a failure at the first call."""
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")
        from purgeproxy.upstream_tls import ssl_context

        try:
            ssl_context(self)
        except (ssl.SSLError, OSError) as error:
            raise ValueError(f"cannot load the CA bundle or client certificate ({error.strerror or error})") from None
        return self


class Upstream(_Strict):
    url: str = Field(description="the upstream FHIR base, e.g. http://hapi:8080/fhir")
    kind: Literal[("auto", *KIND_NAMES)] = Field(  # type: ignore[valid-type]
        "auto", description="which hard-delete strategy applies; auto: from metadata"
    )
    fhir_version: Literal["auto", "4.0.1", "4.3.0", "5.0.0"] = Field(
        "auto", description="picks resource types and the Patient compartment; auto: from metadata"
    )
    timeouts: Timeouts = Timeouts()
    pool: Pool = Pool()
    auth: UpstreamAuth = Field(default_factory=lambda: UpstreamAuth())
    tls: UpstreamTls = UpstreamTls()

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", value):
            raise ValueError("must be an http(s) URL without query or fragment")
        return value.rstrip("/")


class Server(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64, description="processes sharing the port (SO_REUSEPORT)")
    base_path: str = Field("/fhir", description="where the proxy's FHIR base is mounted")
    public_url: str | None = Field(
        None, description="the proxy's FHIR base as clients see it; default: the forwarded host "
        "from a trusted proxy, else the address the client connected to (never its Host header)"
    )
    trusted_proxies: list[IPvAnyNetwork] = Field(
        [], description="CIDRs of reverse proxies whose X-Forwarded-Host/-Proto and Forwarded "
        "headers are believed; default: none"
    )

    @field_validator("base_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not re.match(r"^(/[A-Za-z0-9._~-]+)+$", value):
            raise ValueError("must look like /fhir (no trailing slash)")
        return value

    @field_validator("public_url")
    @classmethod
    def _public(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s?#]+$", value):
            raise ValueError("must be an http(s) URL without query or fragment")
        return value.rstrip("/") if value else value


class Passthrough(_Strict):
    rewrite_bundle_types: list[Literal["searchset", "history", "transaction-response",
                                       "batch-response", "collection", "document", "message",
                                       "transaction", "batch"]] = ["searchset", "history"]
    rewrite_max_bytes: int = Field(
        32 * 1024 * 1024, ge=0, description="larger Bundles stream through unrewritten"
    )
    inspect_max_bytes: int = Field(
        32 * 1024 * 1024, ge=1024,
        description="bodies posted to the base are read and their Bundle entries classified; larger: 413",
    )


Operation = Literal["$purge", "$erase", "$expunge", "cascade-delete", "$delete-expunge"]


class SecretSource(_Strict):
    """Where a secret comes from: an environment variable or a file (read at each use, so a
    rotated Kubernetes secret is picked up), never a literal in the YAML file."""

    env: str | None = Field(None, description="name of the environment variable holding it")
    file: Path | None = Field(None, description="file holding it; surrounding whitespace dropped")

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretSource:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        if self.env is not None and not os.environ.get(self.env):
            raise ValueError(f"environment variable {self.env} is not set")
        if self.file is not None and not self.file.is_file():
            raise ValueError(f"file {self.file} does not exist")
        return self

    def value(self) -> str:
        if self.env is not None:
            return os.environ.get(self.env, "")
        return self.file.read_text(encoding="utf-8").strip() if self.file else ""


class StaticToken(_Strict):
    name: str = Field(min_length=1, description="who holds it, as written to the audit log")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="hex SHA-256 of the token")
    token: SecretSource | None = Field(None, description="the token itself, from env or file")
    operations: list[Operation | Literal["*"]] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> StaticToken:
        if (self.sha256 is None) == (self.token is None):
            raise ValueError("give exactly one of sha256 or token")
        return self


_SAFE_ALGORITHMS = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


class Jwt(_Strict):
    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1, description="this proxy's identifier, e.g. its public FHIR base")
    jwks_url: str | None = Field(None, pattern=r"^https?://", description="the issuer's JWKS")
    keys: list[dict[str, Any]] = Field([], description="public JWKs, instead of or besides jwks_url")
    algorithms: list[_SAFE_ALGORITHMS] = ["RS256", "RS384", "ES256", "ES384"]
    leeway_seconds: int = Field(30, ge=0, le=300, description="clock skew allowed on exp/nbf/iat")
    jwks_cache_seconds: int = Field(300, ge=0)

    @model_validator(mode="after")
    def _some_key(self) -> Jwt:
        if not self.jwks_url and not self.keys:
            raise ValueError("give jwks_url or keys")
        return self


class Introspection(_Strict):
    url: str = Field(pattern=r"^https?://", description="the RFC 7662 introspection endpoint")
    client_id: str = Field(min_length=1)
    client_secret: SecretSource
    issuer: str | None = Field(None, description="when set, the answer's iss must match")
    audience: str | None = Field(None, description="when set, the answer's aud must include it")


class Auth(_Strict):
    admin_token: SecretStr = Field(
        SecretStr(""), description="bearer token that may run every destructive operation; empty: none"
    )
    tokens: list[StaticToken] = []
    jwt: Jwt | None = None
    introspection: Introspection | None = None
    scopes: dict[Operation, list[str]] = Field(
        {}, description="scopes that allow an operation (any one); default: SMART v2 and vendor scopes"
    )
    insecure_allow_all: bool = Field(False, description="anyone may run anything: demos only")
    max_concurrent_per_caller: int = Field(2, ge=1, description="destructive operations in flight "
                                           "or queued as jobs, per caller")
    retry_after_seconds: int = Field(10, ge=1, description="Retry-After of the 429 past a limit")

    @field_validator("scopes")
    @classmethod
    def _patient_scopes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        """A SMART ``patient/`` scope is tied to the token's patient, which only ``$purge`` (one
        Patient's compartment, named in the URL) can check; elsewhere it would reach anyone's."""
        for operation, scopes in value.items():
            if operation != "$purge" and any(scope.startswith("patient/") for scope in scopes):
                raise ValueError(f"{operation}: patient/ scopes are supported for $purge only, "
                                 "where they reach the token's own patient")
        return value


class UpstreamAuth(_Strict):
    """Credentials for the proxy's own upstream calls; the pass-through never adds them."""

    type: Literal["none", "bearer", "basic", "client_credentials"] = "none"
    token: SecretSource | None = Field(None, description="bearer: the token")
    username: str | None = Field(None, description="basic: the user name")
    password: SecretSource | None = Field(None, description="basic: the password")
    token_url: str | None = Field(None, pattern=r"^https?://", description="client_credentials")
    client_id: str | None = None
    client_secret: SecretSource | None = None
    scope: str | None = Field(None, description="client_credentials: the scope to ask for")

    @model_validator(mode="after")
    def _complete(self) -> UpstreamAuth:
        needed = {"none": (), "bearer": ("token",), "basic": ("username", "password"),
                  "client_credentials": ("token_url", "client_id", "client_secret")}[self.type]
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(f"type {self.type} needs {', '.join(missing)}")
        return self


class Safety(_Strict):
    read_only: bool = Field(False, description="refuse every destructive operation (403)")


HardDelete = Literal["require", "auto", "never"]  # refuse without one | use one if offered | never
SharedPolicy = Literal["keep", "delete"]  # resources also in another patient's compartment
AttachmentsPolicy = Literal["delete", "keep"]  # the Binaries of the patient's documents


class Purge(_Strict):
    excluded_types: list[str] = Field(
        ["AuditEvent", "Provenance"], description="kept and listed, never deleted"
    )
    shared: SharedPolicy = Field(
        "keep", description="resources also in another patient's compartment"
    )
    batch_size: int = Field(100, ge=1, le=5000, description="DELETE entries per transaction")
    page_size: int = Field(1000, ge=1, le=MAX_COUNT, description="_count of compartment searches")
    concurrency: int = Field(4, ge=1, le=64, description="upstream requests in flight at once")
    hard_delete_concurrency: int = Field(
        16, ge=1, le=64, description="instance hard deletes ($expunge) in flight at once, over every purge "
        "and vendor operation ($erase, $delete-expunge ...) of the process, besides purge.concurrency"
    )
    transaction_concurrency: int = Field(
        4, ge=1, le=16, description="delete transactions in flight at once in each purge, a batch only beside "
        "batches that reference nothing in it"
    )
    max_rounds: int = Field(5, ge=2, le=100, description="resolve-and-delete rounds at most")
    hard_delete: HardDelete = "auto"
    audit_event: bool = Field(False, description="also write an AuditEvent to the upstream")
    outside_references: bool = Field(
        True, description="search for resources outside the compartment that reference the Patient"
    )
    outside_references_members: int = Field(
        0, ge=0, le=100_000, description="plans of at most this many resources also have every member's "
        "outside referrers searched (about 90 reverse searches per type and 50 ids in R4)"
    )
    earlier_deleted_max_entries: int | None = Field(
        None, ge=1, description="changes of the upstream's system history listed at most, newest first, "
        "to find the patient's resources deleted before the purge; none: every change since the patient "
        "was created (older deletes are then reported as not searched)"
    )
    attachments: AttachmentsPolicy = Field(
        "delete", description="Binaries holding the patient's documents (Attachment.url, securityContext)"
    )
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="operation request bodies")
    max_without_confirm: int = Field(
        1000, ge=0, description="resources one request may delete without confirm=true"
    )
    max_patients_without_confirm: int = Field(
        10, ge=0, description="patients one Group $purge or $bulk-purge may name without confirm=true"
    )

    @field_validator("excluded_types")
    @classmethod
    def _resource_types(cls, value: list[str]) -> list[str]:
        """Checked against every shipped FHIR version now, and the upstream's once it is known."""
        problem = type_name_problem(value, known_resource_types(), "FHIR resource type (R4, R4B or R5)")
        if problem:
            raise ValueError(problem)
        return value


class Jobs(_Strict):
    """Asynchronous jobs (``Prefer: respond-async``): where they are stored and who runs them."""

    store: str = Field("purgeproxy-jobs.sqlite3", min_length=1,
                       description="SQLite file path, or postgresql://… shared by all replicas")
    workers: int = Field(4, ge=0, le=64, description="jobs run at once by this process; 0: none")
    lease_seconds: float = Field(30.0, ge=0.5, le=3600, description="a silent worker's jobs are "
                                 "taken over after this long; heartbeats come every third of it")
    poll_seconds: float = Field(1.0, gt=0, le=60, description="how often idle workers look for jobs")
    retry_after_seconds: int = Field(2, ge=1, le=3600, description="Retry-After on status polls")
    max_attempts: int = Field(5, ge=1, le=100, description="claims of one job before it is an error")
    max_queued: int = Field(100, ge=1, description="jobs queued or running in the store at once "
                            "(all replicas); past it a new job is refused with 429")
    retention_days: float = Field(30, gt=0, description="finished jobs are kept this long, then the "
                                  "workers remove them (queued and running jobs are never removed)")

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        """Anything that looks like a URL must be PostgreSQL's: ``mysql://db/x`` once became an
        SQLite file named ``./mysql:/db/x``."""
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]+):/", value)  # two letters at least: C:/ is a path
        if scheme and scheme.group(1).lower() not in ("postgresql", "postgres"):
            raise ValueError(f"unknown scheme {scheme.group(1)}: give an SQLite file path or a postgresql:// URL")
        return value


class Receipts(_Strict):
    """Signed erasure receipts and their ledger (``purgeproxy.receipts``)."""

    enabled: bool = Field(True, description="sign a receipt for every destructive operation that deleted something")
    signing_key: SecretSource | None = Field(
        None, description="PEM private key (EC P-256: ES256, Ed25519: EdDSA); default: one generated at "
        "first start and kept in the job store")
    key_id: str | None = Field(None, min_length=1, max_length=128,
                               description="the key's kid; default: its RFC 7638 thumbprint")
    verify_keys: list[dict[str, Any]] = Field(
        [], description="public JWKs of earlier signing keys, still served at $receipt-keys after a rotation")
    retention_days: int | None = Field(None, ge=1, description="receipts and ledger entries older than "
                                       "this are removed; default: kept forever")


class Cascade(_Strict):
    max_rounds: int = Field(
        10, ge=1, le=100, description="levels of referencing resources a cascading delete follows"
    )


class Expunge(_Strict):
    allow_everything: bool = Field(
        False, description="allow system-level $expunge with expungeEverything (empties the server)"
    )


class Logging(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"  # console: human-readable lines for a terminal


class Config(_Strict):
    upstream: Upstream
    server: Server = Server()
    passthrough: Passthrough = Passthrough()
    auth: Auth = Auth()
    safety: Safety = Safety()
    purge: Purge = Purge()
    jobs: Jobs = Jobs()
    cascade: Cascade = Cascade()
    receipts: Receipts = Receipts()
    expunge: Expunge = Expunge()
    logging: Logging = Logging()


def expand_env(value: Any, where: str = "", unset: list[str] | None = None) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of the parsed YAML.

    An unset variable without a default is an error rather than an empty string, because an
    empty upstream URL or token that looks configured is worse than a refusal to start. With
    ``unset`` given, each such mistake is added to it (and the reference left empty) instead of
    raised, so that it is reported with every other.
    """
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else str(k), unset) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}.{i}", unset) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        if unset is None:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        unset.append(f"{where}: environment variable {name} is not set")
        return ""

    return _ENV_REF.sub(substitute, value)


_SECRET_KEYS = {"admin_token", "tokens", "token", "password", "client_secret", "sha256", "store"}  # store: its URL may hold one
ENV_PREFIX = "PURGEPROXY_"
# Shorthands read when nothing else sets the key (config.example.yaml reads them itself):
# ``PURGEPROXY_UPSTREAM=… purgeproxy serve`` is a whole configuration.
_ENV_SHORTHANDS = {"PURGEPROXY_UPSTREAM": ("upstream", "url"), "PURGEPROXY_ADMIN_TOKEN": ("auth", "admin_token")}


def _plain(error: Any) -> str:
    """pydantic's message for one error, in the words an operator would use."""
    kind, ctx = error["type"], error.get("ctx") or {}
    words = {
        "missing": "required key is missing" + (" (give upstream.url, or set PURGEPROXY_UPSTREAM)"
                                                if tuple(error["loc"]) == ("upstream",) else ""),
        "extra_forbidden": "unknown key",
        "int_parsing": "must be a whole number", "int_type": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number", "float_type": "must be a number",
        "bool_parsing": "must be true or false", "bool_type": "must be true or false",
        "string_type": "must be text", "list_type": "must be a list",
        "dict_type": "must be a mapping of keys", "model_type": "must be a mapping of keys",
        "model_attributes_type": "must be a mapping of keys",
        "ip_any_network": "must be an IP network such as 10.0.0.0/8",
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
        "greater_than": f"must be more than {ctx.get('gt')}",
        "less_than_equal": f"must be at most {ctx.get('le')}",
        "less_than": f"must be less than {ctx.get('lt')}",
        "too_short": "must not be empty", "string_too_short": "must not be empty",
        "literal_error": f"must be one of {ctx.get('expected')}",
        "enum": f"must be one of {ctx.get('expected')}",
    }
    if kind in ("model_type", "model_attributes_type") and error["loc"] and error["loc"][-1] in _SECRET_KEYS:
        return "must be {env: VAR} or {file: PATH}, never the secret itself"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        return "must be an http:// or https:// URL" if pattern.startswith("^https?://") else f"must match {pattern}"
    if kind in ("value_error", "assertion_error"):
        return str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return words.get(kind, str(error["msg"]))


def _problems(error: ValidationError, origins: dict[str, str]) -> list[str]:
    """One line per mistake, each naming its key (and the environment variable that set it);
    a secret's value is never echoed."""
    lines: list[str] = []
    for each in error.errors():
        path = [str(part) for part in each["loc"]]
        key = ".".join(path) or "(top level)"
        source = next((f" (from {var})" for where, var in origins.items()
                       if key == where or key.startswith(where + ".") or where.startswith(key + ".")), "")
        line = f"{key}{source}: {_plain(each)}"
        if each["type"] not in ("missing", "extra_forbidden") and not _SECRET_KEYS.intersection(path) \
                and not isinstance(each.get("input"), dict | list):
            line += f" (got {each.get('input')!r})"
        if line not in lines:
            lines.append(line)
    return lines


def environment_keys(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Every ``PURGEPROXY_SECTION__KEY`` (``__`` nests, as in the HAPI starter) as a document
    to lay over the file, and where each key came from. A value written ``[…]`` or ``{…}`` is
    read as YAML (lists, e.g. ``PURGEPROXY_SERVER__TRUSTED_PROXIES=[10.0.0.0/8]``); any other
    stays text, which the models turn into numbers and booleans."""
    document: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        path = [part.lower() for part in var[len(ENV_PREFIX):].split("__")]
        if not all(path):
            raise ConfigError(f"{var}: empty key name between double underscores")
        value: Any = environ[var]
        if value.strip().startswith(("[", "{")):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ConfigError(f"{'.'.join(path)} (from {var}): not a valid YAML list or mapping") from None
        target = document
        for part in path[:-1]:
            if not isinstance(target.setdefault(part, {}), dict):
                raise ConfigError(f"{'.'.join(path)} (from {var}): {part} is set as a value and as a section")
            target = target[part]
        if isinstance(target.get(path[-1]), dict):
            raise ConfigError(f"{'.'.join(path)} (from {var}): is set as a value and as a section")
        target[path[-1]] = value
        origins[".".join(path)] = var
    return document, origins


def _merge(base: dict[str, Any], over: dict[str, Any], where: str = "") -> list[str]:
    """Lay ``over`` onto ``base`` key by key (sections merge, values replace); the keys set where
    the file has a value, not a section, are returned as mistakes."""
    problems = []
    for key, value in over.items():
        path = f"{where}.{key}" if where else key
        if isinstance(value, dict) and key in base and not isinstance(base[key], dict):
            problems.append(f"{path}: must be a mapping of keys")
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            problems += _merge(base[key], value, path)
        else:
            base[key] = value
    return problems


def parse_config(raw: Any, overrides: dict[str, Any] | None = None,
                 environ: Mapping[str, str] | None = None) -> Config:
    """Validate an already parsed YAML document, with ``environ``'s ``PURGEPROXY_…__…`` keys and
    then the command-line overrides laid on top; every mistake is reported at once.

    ``environ`` is None for a document alone (tests, embedding); ``serve`` passes ``os.environ``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("(top level): must be a mapping of keys")
    problems: list[str] = []
    document = expand_env(raw, unset=problems)
    origins: dict[str, str] = {}
    if environ is not None:
        for var, (section, key) in _ENV_SHORTHANDS.items():
            if environ.get(var) and isinstance(document.setdefault(section, {}), dict):
                if key not in document[section]:
                    document[section][key] = environ[var]
                    origins[f"{section}.{key}"] = var
        from_env, env_origins = environment_keys(environ)
        problems += _merge(document, from_env)
        origins.update(env_origins)
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".")
        if not isinstance(document.get(section, {}), dict):
            raise ConfigError(f"{section}: must be a mapping of keys")
        document.setdefault(section, {})[key] = value
    try:
        config = Config.model_validate(document)
    except ValidationError as error:
        named = {line.split(":")[0] for line in problems}  # an unset variable's key: said once
        raise ConfigError(*problems, *(line for line in _problems(error, origins)
                                       if line.split(" ")[0].rstrip(":") not in named)) from None
    if problems:
        raise ConfigError(*problems)
    return config


def read_document(path: Path) -> Any:
    """The parsed YAML file; a file that cannot be read or parsed is a ``ConfigError``."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None


def load_config(path: Path | None, overrides: dict[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate the YAML file (none: the environment alone); every failure is a
    ``ConfigError`` carrying every mistake found."""
    return parse_config(read_document(path) if path is not None else {}, overrides, environ)
