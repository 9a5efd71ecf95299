"""Every log line of the test run, checked for secrets after each test.

Log lines leave the process as JSON on stderr, which pytest captures per test and subprocesses
write elsewhere; so rather than parse stderr, a structlog processor (placed before the renderer)
and a stdlib ``logging`` handler copy every event into ``LINES``. After each test an autouse
fixture (conftest) checks the test's lines for the secrets tests registered (tokens, client
secrets, query values), for anything shaped like a bearer token or JWT, and for a query
(``?name=value``) in a logged path or URL. Out of reach: the stderr of subprocesses (the CLI tests), which go through
the same code, configured the same way.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import structlog

LINES: list[str] = []
SECRETS: set[str] = {"test-operator-token", "requests-token", "scope-token"}
SHAPES = ("Bearer ", "eyJ")  # an Authorization value, a JWT's base64url header
QUERY = re.compile(r"\?[^/]*=")  # name=value after a '?' (a decoded %3F in a path is not one)


def register_secret(*values: str) -> None:
    SECRETS.update(v for v in values if v)


def _capture(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    LINES.append(json.dumps(event, default=str, sort_keys=True))
    return event


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            LINES.append(record.getMessage())
        except Exception:  # a broken format string is not ours to report here
            LINES.append(str(record.msg))


_HANDLER = _Handler(level=logging.DEBUG)


def install() -> None:
    """Idempotent: a test that reconfigures logging (the CLI) gets the capture back."""
    processors = list(structlog.get_config()["processors"])
    if _capture not in processors:
        processors.insert(len(processors) - 1, _capture)
        structlog.configure(processors=processors)
    if _HANDLER not in logging.getLogger().handlers:
        logging.getLogger().addHandler(_HANDLER)


def leaks(since: int) -> list[str]:
    """Lines logged since index ``since`` that contain a secret, a token shape or a query."""
    found = []
    for line in LINES[since:]:
        if any(s in line for s in SECRETS) or any(shape in line for shape in SHAPES) or _has_query(line):
            found.append(line)
    return found


def events_in(text: str) -> list[dict[str, Any]]:
    """The JSON log lines in a process's stderr, parsed (other lines are left out)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _has_query(line: str) -> bool:
    try:
        event = json.loads(line)
    except ValueError:
        return False
    return isinstance(event, dict) and any(
        QUERY.search(str(event.get(key, ""))) for key in ("path", "url", "location"))
