"""Structured JSON logging.

Everything the proxy logs goes through structlog as one JSON object per line. Callers pass only
identifiers, paths without queries, statuses and counts: never bodies, tokens or query values,
because they are patient data.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure(level: str = "info") -> None:
    """Route structlog and the standard library's logging to JSON lines on stderr."""
    numeric = logging.getLevelName(level.upper())
    logging.basicConfig(stream=sys.stderr, level=numeric, format="%(message)s", force=True)
    logging.getLogger("aiohttp.access").disabled = True  # our own access log replaces it
    for chatty in ("httpx", "httpcore"):  # they log full URLs, query values included
        logging.getLogger(chatty).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(logger_name=name)


def _logger_name(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Rename the bound ``logger_name`` to ``logger`` in each line."""
    if "logger_name" in event:
        event["logger"] = event.pop("logger_name")
    return event
