"""Reading back what the upstream serves now, rather than assuming it: before a delete (is it
still the version the proxy examined?) and after (is it gone, is its history gone?).

Every read here asks for a fresh answer (``FhirClient`` sends ``Cache-Control: no-cache``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from purgeproxy.fhir.client import GONE, FhirClient, FhirResponse
from purgeproxy.fhir.history import instance_history
from purgeproxy.fhir.references import Key
from purgeproxy.fhir.search import MAX_PAGES, ResolutionError, has_next, next_link


@dataclass
class Reading:
    """The current state of some resources: their bodies, which are gone, which could not be read."""

    current: dict[Key, dict[str, Any]] = field(default_factory=dict)
    gone: list[Key] = field(default_factory=list)
    unreadable: dict[Key, str] = field(default_factory=dict)


def version_of(resource: dict[str, Any]) -> str | None:
    version = (resource.get("meta") or {}).get("versionId")
    return version if isinstance(version, str) else None


async def read_current(client: FhirClient, limit: asyncio.Semaphore, keys: list[Key]) -> Reading:
    """Read every resource now, in one batch Bundle of reads where the upstream answers it in a
    shape we trust, else one by one."""
    answers = await _read_batch(client, limit, keys) if len(keys) > 1 else None
    if answers is None or _reordered(keys, answers, history=False):
        answers = await asyncio.gather(*(_read_one(client, limit, key) for key in keys))
    reading = Reading()
    for key, (status, body) in zip(keys, answers, strict=True):
        if status == 200 and isinstance(body, dict) and (body.get("resourceType"), body.get("id")) == key:
            reading.current[key] = body
        elif status in GONE:
            reading.gone.append(key)
        else:
            reading.unreadable[key] = f"reading it before deleting answered {status or 'nonsense'}"
    return reading


async def _read_one(client: FhirClient, limit: asyncio.Semaphore, key: Key) -> tuple[int, Any]:
    async with limit:
        answer = await client.request("GET", f"{key[0]}/{key[1]}")
    return answer.status, answer.body


async def _batch_get(client: FhirClient, limit: asyncio.Semaphore, urls: list[str]) -> list[Any] | None:
    """The entries of one batch Bundle of GETs, one per URL in order; None when the answer is not
    such a Bundle (the caller then reads one by one or says it is unsure)."""
    bundle = {"resourceType": "Bundle", "type": "batch",
              "entry": [{"request": {"method": "GET", "url": url}} for url in urls]}
    async with limit:
        answer = await client.request("POST", "", json=bundle)
    entries = answer.body.get("entry") if _is_bundle(answer) else None
    return entries if isinstance(entries, list) and len(entries) == len(urls) else None


async def _read_batch(client: FhirClient, limit: asyncio.Semaphore, keys: list[Key]) -> list[tuple[int, Any]] | None:
    entries = await _batch_get(client, limit, [f"{t}/{i}" for t, i in keys])
    return None if entries is None else [batch_entry(entry) for entry in entries]


def _is_bundle(answer: FhirResponse) -> bool:
    return answer.status == 200 and answer.resource_type == "Bundle"


def batch_entry(entry: Any) -> tuple[int, Any]:
    """(status, resource) of one batch entry; status 0 when the entry is not understood."""
    if not isinstance(entry, dict):
        return 0, None
    try:
        status = int(str((entry.get("response") or {}).get("status", "")).split()[0])
    except (ValueError, IndexError):
        return 0, None
    return status, entry.get("resource")


async def _flags(keys: list[Key], check) -> list[Key]:  # type: ignore[no-untyped-def]
    flags = await asyncio.gather(*(check(key) for key in keys))
    return [key for key, flag in zip(keys, flags, strict=True) if flag]


async def still_readable(client: FhirClient, limit: asyncio.Semaphore, keys: list[Key]) -> list[Key]:
    """Which of ``keys`` can still be read.

    Read in batch Bundles of GET entries (``HISTORY_BATCH`` each); only an entry answered 404 or
    410 proves a resource gone, anything else in a batch is read again on its own, and only a
    404 or 410 there proves it gone too: what is not proven gone counts as still there.
    """
    async def readable(key: Key) -> bool:
        return (await _read_one(client, limit, key))[0] not in GONE

    groups = [keys[start:start + HISTORY_BATCH] for start in range(0, len(keys), HISTORY_BATCH)]
    gone: set[Key] = set().union(*await asyncio.gather(*(_gone_in_batch(client, limit, g) for g in groups)))
    return await _flags([key for key in keys if key not in gone], readable)


async def _gone_in_batch(client: FhirClient, limit: asyncio.Semaphore, keys: list[Key]) -> set[Key]:
    """The keys one batch Bundle of reads answers 404 or 410 for (none for a single key)."""
    answers = await _read_batch(client, limit, keys) if len(keys) > 1 else None
    if answers is None or _reordered(keys, answers, history=False):
        return set()
    return {key for key, (status, _) in zip(keys, answers, strict=True) if status in GONE}


def _reordered(keys: list[Key], answers: list[tuple[int, Any]], history: bool) -> bool:
    """Whether some entry of a batch answers for another resource than its request named: a 200
    read of another resource, or a history holding another's versions. A 404 carries no name,
    so an upstream answering out of order would otherwise put one resource's "gone" on another
    still there; the whole batch then proves nothing."""
    for key, (status, body) in zip(keys, answers, strict=True):
        if status != 200 or not isinstance(body, dict):
            continue
        named = ([entry.get("resource") for entry in body.get("entry") or [] if isinstance(entry, dict)]
                 if history else [body])
        if any(isinstance(one, dict) and one.get("id") is not None and (one.get("resourceType"), one.get("id")) != key
               for one in named):
            return True
    return False


HISTORY_BATCH = 100  # reads per batch Bundle (instance _history, or the resource itself)


async def history_left(client: FhirClient, limit: asyncio.Semaphore, keys: list[Key]) -> list[Key]:
    """Resources whose history the upstream still serves (404, 410 or an empty Bundle: gone).

    Read in batch Bundles of GET ``_history`` entries (a 10,000-resource hard delete is read back
    in 100 requests, not 10,000); an entry whose answer is not a plain 404/410 or a history Bundle
    is read again on its own, so a batch answered in a shape we do not trust proves nothing.
    """
    groups = [keys[start:start + HISTORY_BATCH] for start in range(0, len(keys), HISTORY_BATCH)]
    verdicts = [v for group in await asyncio.gather(*(_history_batch(client, limit, g) for g in groups))
                for v in group]
    unsure = [key for key, verdict in zip(keys, verdicts, strict=True) if verdict is None]
    again = dict(zip(unsure, await asyncio.gather(*(_history_one(client, limit, key) for key in unsure)),
                     strict=True))
    return [key for key, verdict in zip(keys, verdicts, strict=True)
            if (again[key] if verdict is None else verdict)]


async def _history_one(client: FhirClient, limit: asyncio.Semaphore, key: Key) -> bool:
    async with limit:
        answer = await client.request("GET", instance_history(key))
    return not answer.serves_no_history


async def _history_batch(client: FhirClient, limit: asyncio.Semaphore, keys: list[Key]) -> list[bool | None]:
    """Whether each key still has history, from one batch Bundle; None where the answer is unsure."""
    if len(keys) < 2:
        return [None] * len(keys)
    entries = await _batch_get(client, limit, [instance_history(key) for key in keys])
    answers = None if entries is None else [batch_entry(entry) for entry in entries]
    if answers is None or _reordered(keys, answers, history=True):
        return [None] * len(keys)
    return [_history_entry(status, body) for status, body in answers]


def _history_entry(status: int, body: Any) -> bool | None:
    if status in GONE:
        return False
    if status == 200 and isinstance(body, dict) and body.get("resourceType") == "Bundle" \
            and body.get("type") == "history":
        return bool(body.get("entry"))
    return None


History = list[dict[str, Any]] | None  # every version's resource in an instance history; None: 404/410
# (not ``deletion.Versions``, which maps each resource to the one version the proxy examined)


async def read_histories(client: FhirClient, limit: asyncio.Semaphore, keys: list[Key]) -> list[History]:
    """Every version of each key, in the order the upstream lists them (None: 404/410).

    Read in batch Bundles of ``_history`` reads; a history that has more pages, or a batch
    answered in a shape we do not trust, is read on its own. Raises ``ResolutionError`` for a
    history the upstream will not serve.
    """
    groups = [keys[start:start + HISTORY_BATCH] for start in range(0, len(keys), HISTORY_BATCH)]
    firsts = [v for group in await asyncio.gather(*(_versions_batch(client, limit, g) for g in groups)) for v in group]
    return list(await asyncio.gather(*(
        read_history(client, limit, key) if first is _UNSURE else _done(first)
        for key, first in zip(keys, firsts, strict=True))))


async def read_history(client: FhirClient, limit: asyncio.Semaphore, key: Key) -> History:
    """The resources of every version of ``key``, its pages followed (None: 404/410)."""
    entries = await history_entries(client, limit, key)
    return None if entries is None else [e["resource"] for e in entries if isinstance(e.get("resource"), dict)]


async def history_entries(client: FhirClient, limit: asyncio.Semaphore, key: Key) -> list[dict[str, Any]] | None:
    """Every entry of ``key``'s history, deletions included, newest first, its pages followed
    (None: 404/410); asked whole (``instance_history``). Raises ``ResolutionError`` for an
    answer that is not a history Bundle: a history that cannot be read proves nothing gone."""
    path = instance_history(key)
    entries: list[dict[str, Any]] = []
    url: str | None = path
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        if url is None:
            return entries
        async with limit:
            answer = await client.request("GET", url)
        if answer.status in GONE:
            return None
        if not _is_bundle(answer):
            raise ResolutionError(f"reading {path} answered {answer.status}")
        entries += [e for e in answer.body.get("entry") or [] if isinstance(e, dict)]
        url = next_link(answer.body, client.base_url, seen)
    raise ResolutionError(f"the paging of {path} does not end")


_UNSURE = object()  # a batch entry that proves nothing: that history is read on its own


async def _done(versions: History) -> History:
    return versions


async def _versions_batch(client: FhirClient, limit: asyncio.Semaphore, keys: list[Key]) -> list[Any]:
    """The versions each key's batch entry holds, or ``_UNSURE`` (more pages, not a history, or
    a batch that answers for other resources than it was asked)."""
    entries = await _batch_get(client, limit, [instance_history(key) for key in keys]) if len(keys) > 1 else None
    answers = None if entries is None else [batch_entry(entry) for entry in entries]
    if answers is None or _reordered(keys, answers, history=True):
        return [_UNSURE] * len(keys)
    return [_versions_entry(status, body) for status, body in answers]


def _versions_entry(status: int, body: Any) -> Any:
    if status in GONE:
        return None
    if not (status == 200 and isinstance(body, dict) and body.get("resourceType") == "Bundle"
            and body.get("type") == "history"):
        return _UNSURE
    if has_next(body):
        return _UNSURE  # paged: the paging is followed on its own
    return [e["resource"] for e in body.get("entry") or [] if isinstance(e.get("resource"), dict)]
