"""Verification after the fact: what the upstream still serves, read back rather than assumed."""

from __future__ import annotations

import asyncio

from purgeproxy.fhir.client import FhirClient
from purgeproxy.fhir.references import Key

GONE = (404, 410)


async def _flags(keys: list[Key], check) -> list[Key]:  # type: ignore[no-untyped-def]
    flags = await asyncio.gather(*(check(key) for key in keys))
    return [key for key, flag in zip(keys, flags) if flag]


async def still_readable(client: FhirClient, limit: asyncio.Semaphore, keys: list[Key]) -> list[Key]:
    """Which of ``keys`` can still be read."""
    async def readable(key: Key) -> bool:
        async with limit:
            answer = await client.request("GET", f"{key[0]}/{key[1]}")
        return answer.status not in GONE

    return await _flags(keys, readable)


async def history_left(client: FhirClient, limit: asyncio.Semaphore, keys: list[Key]) -> list[Key]:
    """Resources whose history the upstream still serves (404, 410 or an empty Bundle: gone)."""
    async def has_history(key: Key) -> bool:
        async with limit:
            answer = await client.request("GET", f"{key[0]}/{key[1]}/_history")
        if answer.status in GONE:
            return False
        return not (answer.resource_type == "Bundle" and not answer.body.get("entry"))

    return await _flags(keys, has_history)
