"""Configuration: the YAML file, validated once at start-up.

Validation lives in pydantic models so that a wrong key, type or value is caught before the proxy
binds its port, and reported as one line naming the key (``ConfigError``), never as a traceback.
"""

from __future__ import annotations

import os
import re
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
from purgeproxy.servers.registry import KIND_NAMES

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A configuration mistake, phrased for the operator in one line."""


class _Strict(BaseModel):
    """Unknown keys are mistakes: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    connect: float = Field(5.0, gt=0, description="seconds to open a connection to the upstream")
    read: float = Field(120.0, gt=0, description="seconds the upstream may stay silent mid-answer")


class Pool(_Strict):
    max_connections: int = Field(200, ge=1, description="upstream connections kept open at most")
    keepalive_seconds: float = Field(30.0, ge=0)


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
    page_size: int = Field(1000, ge=1, le=5000, description="_count of compartment searches")
    concurrency: int = Field(4, ge=1, le=64, description="upstream requests in flight at once")
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
    attachments: AttachmentsPolicy = Field(
        "delete", description="Binaries holding the patient's documents (Attachment.url, securityContext)"
    )
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="operation request bodies")
    max_without_confirm: int = Field(
        1000, ge=0, description="resources one request may delete without confirm=true"
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


class Config(_Strict):
    upstream: Upstream
    server: Server = Server()
    passthrough: Passthrough = Passthrough()
    auth: Auth = Auth()
    safety: Safety = Safety()
    purge: Purge = Purge()
    jobs: Jobs = Jobs()
    cascade: Cascade = Cascade()
    expunge: Expunge = Expunge()
    logging: Logging = Logging()


def expand_env(value: Any, where: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of the parsed YAML.

    An unset variable without a default is an error rather than an empty string, because an
    empty upstream URL or token that looks configured is worse than a refusal to start.
    """
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set")

    return _ENV_REF.sub(substitute, value)


_SECRET_KEYS = {"admin_token", "tokens", "token", "password", "client_secret", "sha256"}


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if first["type"] == "missing":
        return f"{key}: required key is missing"
    if _SECRET_KEYS.intersection(str(part) for part in first["loc"]):
        return f"{key}: {first['msg']}"  # the value may be a secret: never echo it
    return f"{key}: {first['msg']} (got {first.get('input')!r})"


def parse_config(raw: Any, overrides: dict[str, Any] | None = None) -> Config:
    """Validate an already parsed YAML document, with command-line overrides applied on top."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("(top level): must be a mapping of keys")
    document = expand_env(raw)
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".")
        if not isinstance(document.get(section, {}), dict):
            raise ConfigError(f"{section}: must be a mapping of keys")
        document.setdefault(section, {})[key] = value
    try:
        return Config.model_validate(document)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read, expand and validate the YAML file; every failure is a ``ConfigError``."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return parse_config(raw, overrides)
